// Package topics names the Kafka topics of the external contract
// (docs/architecture.md, "The external contract"): persistence writes
// outbox entries for them, the publisher creates them and publishes to
// them, and tests and tools read them. Every Go reference to a topic name
// goes through these constants.
package topics

const (
	// Events carries a BiometricEvent per record version (key = user id).
	Events = "biometrics.events.v1"
	// Connections carries ConnectionEvents: connection lifecycle, sync
	// state and user erasure (key = user id).
	Connections = "biometrics.connections.v1"
	// EventsDeadLetters keeps what can never be published to Events.
	EventsDeadLetters = Events + ".dlq"
)
