"""Getting records to the collector: the durable outbox, the MQTT publisher, one-shot publishing."""
