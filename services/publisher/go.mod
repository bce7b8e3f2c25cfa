module github.com/biobridge/bridge/services/publisher

go 1.26.8

require (
	github.com/biobridge/bridge/gen v0.0.0
	github.com/biobridge/bridge/pkg v0.0.0
)

replace (
	github.com/biobridge/bridge/gen => ../../gen
	github.com/biobridge/bridge/pkg => ../../pkg
)
