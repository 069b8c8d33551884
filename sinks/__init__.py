"""Events out: the sink runner (``faec-rec sinks``), MQTT with Home Assistant discovery, webhooks."""
