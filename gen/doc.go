// Package gen is the module of generated code: Go messages, gRPC stubs and
// grpc-gateway handlers under go/, the OpenAPI document under openapi/.
// Regenerate with `make generate`; never edit the generated files by hand.
package gen
