-- Events older than `events.keep_days` are removed by age.
CREATE INDEX events_by_time ON events (at_ms);
