"""From MQTT message to stored row: verify, validate, deduplicate, store."""
