package store

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/require"
)

// Every value copyRows writes is the field pgx's type map writes for the
// same value and column type: the length word, then the same bytes (or -1
// alone for NULL). The writes that go to the database are covered end to
// end by TestBulkAndSmallWritesStoreTheSameRows.
func TestCopyRowsEncodesLikePgx(t *testing.T) {
	m := pgtype.NewMap()
	when := time.Date(2026, 12, 5, 13, 14, 15, 123456789, time.FixedZone("x", 3600))
	uuid := pgtype.UUID{Bytes: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Valid: true}
	for _, tc := range []struct {
		name  string
		oid   uint32
		value any
		write func(c *copyRows)
	}{
		{"text", pgtype.TextOID, "héllo, wörld", func(c *copyRows) { c.text("héllo, wörld") }},
		{"empty text", pgtype.TextOID, "", func(c *copyRows) { c.text("") }},
		{"int2", pgtype.Int2OID, int16(-7), func(c *copyRows) { c.int2(-7) }},
		{"int4", pgtype.Int4OID, int32(math.MaxInt32), func(c *copyRows) { c.int4(math.MaxInt32) }},
		{"int8", pgtype.Int8OID, int64(math.MinInt64), func(c *copyRows) { c.int8(math.MinInt64) }},
		{"float8", pgtype.Float8OID, 72.25, func(c *copyRows) { c.float8(72.25) }},
		{"float8 negative zero", pgtype.Float8OID, math.Copysign(0, -1), func(c *copyRows) { c.float8(math.Copysign(0, -1)) }},
		{"bool true", pgtype.BoolOID, true, func(c *copyRows) { c.boolean(true) }},
		{"bool false", pgtype.BoolOID, false, func(c *copyRows) { c.boolean(false) }},
		{"bytea", pgtype.ByteaOID, []byte{0, 1, 0xff}, func(c *copyRows) { c.bytea([]byte{0, 1, 0xff}) }},
		{"empty bytea", pgtype.ByteaOID, []byte{}, func(c *copyRows) { c.bytea([]byte{}) }},
		{"nil bytea", pgtype.ByteaOID, []byte(nil), func(c *copyRows) { c.bytea(nil) }},
		{"uuid", pgtype.UUIDOID, uuid, func(c *copyRows) { c.uuid(uuid) }},
		{"null uuid", pgtype.UUIDOID, pgtype.UUID{}, func(c *copyRows) { c.uuid(pgtype.UUID{}) }},
		{"time", pgtype.TimestamptzOID, when, func(c *copyRows) { c.time(when) }},
		{"time before 1970", pgtype.TimestamptzOID, time.Date(1969, 7, 20, 20, 17, 40, 999, time.UTC),
			func(c *copyRows) { c.time(time.Date(1969, 7, 20, 20, 17, 40, 999, time.UTC)) }},
		{"timestamptz", pgtype.TimestamptzOID, pgtype.Timestamptz{Time: when, Valid: true},
			func(c *copyRows) { c.timestamptz(pgtype.Timestamptz{Time: when, Valid: true}) }},
		{"null timestamptz", pgtype.TimestamptzOID, pgtype.Timestamptz{}, func(c *copyRows) { c.timestamptz(pgtype.Timestamptz{}) }},
		{"infinity", pgtype.TimestamptzOID, pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true},
			func(c *copyRows) { c.timestamptz(pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}) }},
		{"-infinity", pgtype.TimestamptzOID, pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true},
			func(c *copyRows) {
				c.timestamptz(pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true})
			}},
		{"text[]", pgtype.TextArrayOID, []string{"heart_rate_bpm", "", "spo2_pct"},
			func(c *copyRows) { c.textArray([]string{"heart_rate_bpm", "", "spo2_pct"}) }},
		{"empty text[]", pgtype.TextArrayOID, []string{}, func(c *copyRows) { c.textArray([]string{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, []byte{}) // nil only for NULL
			require.NoError(t, err)
			var c copyRows
			tc.write(&c)
			require.Equal(t, 1, c.fields)
			require.GreaterOrEqual(t, len(c.b), 4)
			size := int32(binary.BigEndian.Uint32(c.b))
			if want == nil {
				require.Equal(t, int32(-1), size, "NULL")
				require.Len(t, c.b, 4)
				return
			}
			require.Equal(t, int32(len(want)), size)
			require.Equal(t, want, c.b[4:])
		})
	}
}

// A fill function that writes a value too few or too many is an error
// before anything is sent.
func TestCopyRowsCountsTheValuesOfEachRow(t *testing.T) {
	var c copyRows
	_, err := c.copyInto(t.Context(), nil, "outbox", outboxColumns, 2, func(c *copyRows, i int) {
		c.text("t")
		c.text("k")
		c.int2(1)
		c.bytea([]byte{1})
		c.text("")
		if i == 0 {
			c.int4(1)
		}
	})
	require.EqualError(t, err, "copy outbox: row 1 has 5 values for 6 columns")
}
