package kafka

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// TestRawPayloadSchemasBuild: the raw scan implements the payload types
// as they are (proto3, no groups); a payload type it could not scan
// makes this fail, not the publisher.
func TestRawPayloadSchemasBuild(t *testing.T) {
	t.Parallel()
	for _, schemaOf := range []func() (*wireSchema, error){eventSchema, connectionSchema} {
		s, err := schemaOf()
		require.NoError(t, err)
		require.NotEmpty(t, s.fields)
	}
	// What it does not implement is refused with an error (proto2 here).
	_, err := newWireSchema((*descriptorpb.DescriptorProto)(nil).ProtoReflect().Descriptor(), map[protoreflect.FullName]*wireSchema{})
	require.ErrorContains(t, err, "is not proto3")
}
