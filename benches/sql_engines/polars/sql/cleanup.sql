-- polars variant of pipelines/sql/cleanup.sql: polars SQL cannot write a time-zone-aware literal
-- ("`timestamp` with timezone is not (yet) supported") nor compare a UTC column with a naive
-- one, so the event times lose their (UTC) zone here.
-- Pre-cleanup of the events: drop test accounts' events and events delivered twice.
SELECT DISTINCT e.event_id, e.customer_id, CAST(e.event_time AS TIMESTAMP) AS event_time, e.event_type, e.minutes, e.amount
FROM events AS e
JOIN profiles AS p ON p.customer_id = e.customer_id
WHERE NOT p.is_test
