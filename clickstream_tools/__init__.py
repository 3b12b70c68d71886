"""Developer tooling around the service, kept out of the service package (`stream_app`):
the Kafka broker launcher for tests and the demo, the demo and its live view, the storefront
simulator, log replay, and the training data sources of `stream-app train`. The service never
imports from here; `stream-app` reaches these through its tooling subcommands."""
