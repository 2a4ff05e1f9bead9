-- polars variant of pipelines/sql/features.sql: the snapshot time as a literal without zone
-- (see cleanup.sql), and dates cast to TIMESTAMP before EXTRACT(EPOCH ...) ("`nanosecond`
-- operation not supported for dtype `date`").
-- The flat training table from the raw export: one row per real customer (test accounts
-- dropped), the features as aggregates of their cleaned events up to the snapshot time, the
-- targets from the labels.
-- TIMESTAMP '2026-11-20 06:00:00' is the run's snapshot time (a TIMESTAMP), DATE '2026-11-20' its date (a DATE).
WITH sessions AS (
    SELECT customer_id,
           SUM(CASE WHEN event_type = 'session' AND event_time > TIMESTAMP '2026-11-20 06:00:00' - INTERVAL '30 days'
                    THEN 1 ELSE 0 END) AS sessions_30d,
           ROUND(AVG(CASE WHEN event_type = 'session' AND event_time > TIMESTAMP '2026-11-20 06:00:00' - INTERVAL '90 days'
                          THEN minutes END), 2) AS avg_session_minutes,
           MAX(CASE WHEN event_type = 'login' THEN event_time END) AS last_login,
           SUM(CASE WHEN event_type = 'support_ticket' AND event_time > TIMESTAMP '2026-11-20 06:00:00' - INTERVAL '90 days'
                    THEN 1 ELSE 0 END) AS support_tickets_90d,
           SUM(CASE WHEN event_type = 'payment_failed' AND event_time > TIMESTAMP '2026-11-20 06:00:00' - INTERVAL '90 days'
                    THEN 1 ELSE 0 END) AS payment_failures_90d,
           COALESCE(SUM(CASE WHEN event_type = 'payment' AND event_time > TIMESTAMP '2026-11-20 06:00:00' - INTERVAL '30 days'
                             THEN amount END), 0.0) AS monthly_spend
    FROM events_clean
    WHERE event_time <= TIMESTAMP '2026-11-20 06:00:00'
    GROUP BY customer_id
)
SELECT p.customer_id,
       DATE '2026-11-20' AS snapshot_date,
       p.updated_at,
       p.gender,
       CAST(EXTRACT(YEAR FROM DATE '2026-11-20') - p.birth_year AS INT) AS age,
       p.region,
       p.plan,
       p.device,
       CAST(FLOOR((EXTRACT(EPOCH FROM CAST(DATE '2026-11-20' AS TIMESTAMP)) - EXTRACT(EPOCH FROM CAST(p.signup_date AS TIMESTAMP))) / 86400 / 30.4375) AS INT)
           AS tenure_months,
       CAST(s.sessions_30d AS INT) AS sessions_30d,
       s.avg_session_minutes,
       CAST(FLOOR((EXTRACT(EPOCH FROM TIMESTAMP '2026-11-20 06:00:00') - EXTRACT(EPOCH FROM s.last_login)) / 86400) AS INT)
           AS days_since_last_login,
       p.features_used,
       CAST(s.support_tickets_90d AS INT) AS support_tickets_90d,
       CAST(s.payment_failures_90d AS INT) AS payment_failures_90d,
       s.monthly_spend,
       p.email_open_rate,
       p.discount_pct,
       l.engagement_score,
       l.churned,
       l.ltv_12m
FROM profiles AS p
JOIN sessions AS s ON s.customer_id = p.customer_id
JOIN labels AS l ON l.customer_id = p.customer_id
WHERE NOT p.is_test
-- A stable order: the same rows in the same order train the same models.
ORDER BY p.customer_id
