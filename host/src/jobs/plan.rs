//! Plans by device attributes (rollout strategies of WIT 0.1.8), filled in
//! SQL and in one pass over the job's devices, whatever their number.
//!
//! The job's target devices are staged in a temporary table with their
//! rank in a stable pseudo-random order ([`STAGE_COLUMNS`], filled by the
//! caller). The strategy sees them counted by attribute ([`population`]);
//! its groups are matched against every device in one statement (one bit
//! per distinct selector), and `strategy::fill` gives each device its group: group
//! `k` takes its amount of the devices that match its selector and that no
//! earlier group took, lowest ranks first. Only the bits (8 bytes a
//! device) and the groups (4 bytes a device) cross the wire; a million
//! device ids never do.

use sqlx::PgConnection;

use crate::plugins::strategy::{
    Filled, Group, Population, Selector, TagValues, ValueCount, distinct_selectors, fill,
};

/// The temporary table of a job's staged targets, dropped at commit:
/// `(id, rn, family, model, version, behind, tags)`, `rn` counting from 1.
pub const STAGE_TABLE: &str = "CREATE TEMPORARY TABLE plan_targets (
        id TEXT NOT NULL, rn INTEGER NOT NULL, family TEXT NOT NULL, model TEXT,
        version TEXT, behind BOOLEAN NOT NULL, tags JSONB NOT NULL
    ) ON COMMIT DROP";

/// The columns to select into `plan_targets` from `devices d` of the job
/// `$1`: the rank is that of plans by sizes.
pub const STAGE_COLUMNS: &str = "d.id,
    (row_number() OVER (ORDER BY md5($1::text || d.id) COLLATE \"C\", d.id))::int,
    d.family, d.model, d.firmware_version, d.gateway_id IS NOT NULL, d.tags";

/// Most values listed per attribute and per tag key, and most tag keys.
const LISTED_VALUES: i64 = 100;
const LISTED_TAGS: i64 = 50;
const LISTED_MODELS: usize = 1000;

/// Counts the staged targets by attribute: one scan for the total, the
/// devices behind a gateway and the values of family, model and version
/// (`GROUPING SETS`), one for the tags.
pub async fn population(conn: &mut PgConnection) -> Result<Population, sqlx::Error> {
    // `set`: 0 the whole, 1 by family, 2 by model, 3 by version.
    let rows: Vec<(i32, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT CASE WHEN GROUPING(family) = 0 THEN 1
                     WHEN GROUPING(model) = 0 THEN 2
                     WHEN GROUPING(version) = 0 THEN 3 ELSE 0 END,
                coalesce(family, model, version), count(*), count(*) FILTER (WHERE behind)
         FROM plan_targets GROUP BY GROUPING SETS ((), (family), (model), (version))",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (mut total, mut behind) = (0, 0);
    let mut counted: [Vec<(String, i64)>; 3] = Default::default();
    for (set, value, n, behind_n) in rows {
        match (set, value) {
            (0, _) => (total, behind) = (n, behind_n),
            (1..=3, Some(value)) => counted[set as usize - 1].push((value, n)),
            // Devices without a model or a version are not listed.
            _ => {}
        }
    }
    let [families, models, versions] = counted.map(|mut values| {
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        values.truncate(LISTED_MODELS);
        values.into_iter().map(value_count).collect::<Vec<_>>()
    });
    let tag_rows: Vec<(String, i64, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH pairs AS (
             SELECT t.key, t.value, count(*) AS n
             FROM plan_targets p, jsonb_each_text(p.tags) t
             WHERE t.value IS NOT NULL GROUP BY 1, 2
         ), keys AS (
             SELECT key, sum(n)::bigint AS devices FROM pairs GROUP BY key
             ORDER BY devices DESC, key LIMIT {LISTED_TAGS}
         ), ranked AS (
             SELECT p.key, p.value, p.n,
                    row_number() OVER (PARTITION BY p.key ORDER BY p.n DESC, p.value) AS r
             FROM pairs p JOIN keys k USING (key)
         )
         SELECT k.key, k.devices, r.value, r.n FROM keys k JOIN ranked r USING (key)
         WHERE r.r <= {LISTED_VALUES}
         ORDER BY k.devices DESC, k.key, r.n DESC, r.value"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let mut tags: Vec<(TagValues, i64)> = Vec::new();
    for (key, devices, value, n) in tag_rows {
        if tags.last().map(|(t, _)| &t.key) != Some(&key) {
            tags.push((
                TagValues {
                    key,
                    values: Vec::new(),
                    unlisted: 0,
                },
                devices,
            ));
        }
        if let Some((tag, _)) = tags.last_mut() {
            tag.values.push(value_count((value, n)));
        }
    }
    Ok(Population {
        total: clamp(total),
        families,
        models,
        versions,
        behind_gateway: clamp(behind),
        tags: tags
            .into_iter()
            .map(|(mut tag, devices)| {
                let listed: i64 = tag.values.iter().map(|v| i64::from(v.devices)).sum();
                tag.unlisted = clamp(devices - listed);
                tag
            })
            .collect(),
    })
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn value_count((value, n): (String, i64)) -> ValueCount {
    ValueCount {
        value,
        devices: clamp(n),
    }
}

/// A value bound to a selector's SQL.
enum Bound {
    Texts(Vec<String>),
    Text(String),
    Flag(bool),
}

/// The SQL condition of a selector over `plan_targets`, its values bound
/// from `$first` on.
fn condition(selector: &Selector, binds: &mut Vec<Bound>) -> String {
    let mut parts = Vec::new();
    let bind = |value: Bound, binds: &mut Vec<Bound>| {
        binds.push(value);
        format!("${}", binds.len())
    };
    if !selector.models.is_empty() {
        let p = bind(Bound::Texts(selector.models.clone()), binds);
        parts.push(format!("model = ANY({p}::text[])"));
    }
    if !selector.versions.is_empty() {
        let p = bind(Bound::Texts(selector.versions.clone()), binds);
        parts.push(format!("version = ANY({p}::text[])"));
    }
    if let Some(behind) = selector.behind_gateway {
        let p = bind(Bound::Flag(behind), binds);
        parts.push(format!("behind = {p}::boolean"));
    }
    for tag in &selector.tags {
        let key = bind(Bound::Text(tag.key.clone()), binds);
        if tag.values.is_empty() {
            parts.push(format!("jsonb_exists(tags, {key}::text)"));
        } else {
            let values = bind(Bound::Texts(tag.values.clone()), binds);
            parts.push(format!("(tags ->> {key}::text) = ANY({values}::text[])"));
        }
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

/// Which selectors each staged target matches (bit `i`: selector `i`), in
/// rank order.
async fn matches(
    conn: &mut PgConnection,
    selectors: &[&Selector],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut binds = Vec::new();
    let bits: Vec<String> = selectors
        .iter()
        .enumerate()
        .map(|(i, selector)| {
            let condition = condition(selector, &mut binds);
            format!("(CASE WHEN {condition} THEN 1::int8 << {i} ELSE 0::int8 END)")
        })
        .collect();
    let sql = format!(
        "SELECT coalesce(array_agg(({}) ORDER BY rn), '{{}}') FROM plan_targets",
        bits.join(" | ")
    );
    let mut query = sqlx::query_scalar::<_, Vec<i64>>(sqlx::AssertSqlSafe(sql));
    for bound in binds {
        query = match bound {
            Bound::Texts(values) => query.bind(values),
            Bound::Text(value) => query.bind(value),
            Bound::Flag(flag) => query.bind(flag),
        };
    }
    query.fetch_one(&mut *conn).await
}

/// Fills `groups` with the staged targets.
pub async fn fill_staged(conn: &mut PgConnection, groups: &[Group]) -> Result<Filled, sqlx::Error> {
    let (selectors, selector_of) = distinct_selectors(groups);
    let matched = matches(conn, &selectors).await?;
    Ok(fill(&matched, groups, &selector_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::strategy::TagMatch;

    fn any() -> Selector {
        Selector {
            models: Vec::new(),
            versions: Vec::new(),
            behind_gateway: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn selectors_become_bound_conditions() {
        let mut binds = Vec::new();
        let selector = Selector {
            models: vec!["xavier".into()],
            versions: Vec::new(),
            behind_gateway: Some(false),
            tags: vec![
                TagMatch {
                    key: "site".into(),
                    values: vec!["q7'; DROP TABLE devices; --".into()],
                },
                TagMatch {
                    key: "ring".into(),
                    values: Vec::new(),
                },
            ],
        };
        assert_eq!(
            condition(&selector, &mut binds),
            "model = ANY($1::text[]) AND behind = $2::boolean AND (tags ->> $3::text) = ANY($4::text[]) \
             AND jsonb_exists(tags, $5::text)"
        );
        assert_eq!(binds.len(), 5);
        assert_eq!(condition(&any(), &mut Vec::new()), "true");
    }
}
