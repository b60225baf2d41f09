"""Embedded services (Kafka-protocol broker, controller, standalone runner) for local use and tests."""
