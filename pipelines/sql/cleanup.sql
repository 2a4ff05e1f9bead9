-- Pre-cleanup of the events: drop test accounts' events and events delivered twice.
SELECT DISTINCT e.event_id, e.customer_id, e.event_time, e.event_type, e.minutes, e.amount
FROM events AS e
JOIN profiles AS p ON p.customer_id = e.customer_id
WHERE NOT p.is_test
