-- When the device's hello last brought its command again. A device that
-- says hello is connected: the command sent in answer must be answered
-- within the job's progress timeout like any other, or the attempt is
-- stalled. Without it, a device whose final status was lost (a broker
-- restart drops what is in flight) and which ignores the repeat of a
-- command it finished would hold its execution in flight until the job's
-- delivery deadline. NULL: the command was not sent in answer to a hello;
-- a new attempt clears it.
ALTER TABLE executions ADD COLUMN hello_at TIMESTAMPTZ;
