// Package openapi embeds the OpenAPI document generated from the protos, so the
// gateway can serve it at /openapi.json without reading files at run time.
package openapi

import _ "embed"

// Spec is the merged OpenAPI (Swagger 2.0) document of every REST route.
//
//go:embed spec/biobridge.swagger.json
var Spec []byte
