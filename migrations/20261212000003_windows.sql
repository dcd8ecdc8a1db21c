-- Maintenance windows: when a job may dispatch. `windows` is
-- {"time_zone": IANA name, "times": [{"days": ["mon", ...], "from":
-- "HH:MM:SS", "to": "HH:MM:SS"}]}; a window whose `to` is not after its
-- `from` ends the next day. NULL: always open.
ALTER TABLE jobs ADD COLUMN windows JSONB;

-- Whether one of `windows` is open at `at`.
CREATE FUNCTION rollway_window_open(windows jsonb, at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    local_at timestamp;
    t time;
    today text;
    yesterday text;
    w jsonb;
    opens time;
    closes time;
BEGIN
    IF windows IS NULL THEN
        RETURN true;
    END IF;
    local_at := at AT TIME ZONE (windows->>'time_zone');
    t := local_at::time;
    today := lower(to_char(local_at, 'Dy'));
    yesterday := lower(to_char(local_at - interval '1 day', 'Dy'));
    FOR w IN SELECT value FROM jsonb_array_elements(windows->'times') LOOP
        opens := (w->>'from')::time;
        closes := (w->>'to')::time;
        IF opens < closes THEN
            IF (w->'days') ? today AND t >= opens AND t < closes THEN
                RETURN true;
            END IF;
        ELSE
            IF (w->'days') ? today AND t >= opens THEN
                RETURN true;
            END IF;
            IF (w->'days') ? yesterday AND t < closes THEN
                RETURN true;
            END IF;
        END IF;
    END LOOP;
    RETURN false;
END $$;

-- When the next of `windows` opens after `after`; NULL when one is open
-- at `after` (or there are none).
CREATE FUNCTION rollway_next_window(windows jsonb, after timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    tz text;
    day date;
    w jsonb;
    opens timestamptz;
    best timestamptz;
BEGIN
    IF windows IS NULL OR rollway_window_open(windows, after) THEN
        RETURN NULL;
    END IF;
    tz := windows->>'time_zone';
    FOR d IN 0..7 LOOP
        day := (after AT TIME ZONE tz)::date + d;
        FOR w IN SELECT value FROM jsonb_array_elements(windows->'times') LOOP
            IF (w->'days') ? lower(to_char(day, 'Dy')) THEN
                opens := (day + (w->>'from')::time) AT TIME ZONE tz;
                IF opens > after AND (best IS NULL OR opens < best) THEN
                    best := opens;
                END IF;
            END IF;
        END LOOP;
        IF best IS NOT NULL THEN
            RETURN best;
        END IF;
    END LOOP;
    RETURN best;
END $$;
