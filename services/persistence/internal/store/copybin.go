package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// copyRows is PostgreSQL's binary COPY format (COPY ... FROM STDIN BINARY)
// for rows whose column types the code that fills them fixes: each value is
// appended by a method of its column's type. pgx's CopyFrom plans the
// encoding of every value through its type map (a plan look-up per value:
// about a fifth of the Go CPU of a HealthKit push of 1000 samples); here
// the plan is the fill function. The encodings are pgx's own
// (TestCopyRowsEncodesLikePgx holds them to pgtype.Map.Encode).
type copyRows struct {
	b []byte
	// fields counts the values of the current row, to catch a fill
	// function that writes fewer or more values than there are columns.
	fields int
}

// copyBuffers keeps COPY buffers between writes: a push of 1000 samples
// fills a few hundred KiB per table, and growing a buffer to that size on every
// write was a third of the COPYs' Go CPU. Buffers that grew past
// maxPooledCopy (a rare huge write) are left to the collector.
var copyBuffers = sync.Pool{New: func() any { return new(copyRows) }}

const maxPooledCopy = 4 << 20

func getCopyRows() *copyRows { return copyBuffers.Get().(*copyRows) }

func putCopyRows(c *copyRows) {
	if cap(c.b) <= maxPooledCopy {
		copyBuffers.Put(c)
	}
}

// copySignature starts binary COPY data: the 11-byte signature, no flags,
// no header extension.
const copySignature = "PGCOPY\n\xff\r\n\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const microsecFromUnixEpochToY2K = 946_684_800 * 1_000_000

func (c *copyRows) reset() {
	c.b = append(c.b[:0], copySignature...)
	c.fields = 0
}

func (c *copyRows) field(size int) {
	c.fields++
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(int32(size)))
}

func (c *copyRows) null() { c.field(-1) }

func (c *copyRows) text(s string) {
	c.field(len(s))
	c.b = append(c.b, s...)
}

func (c *copyRows) int2(v int16) {
	c.field(2)
	c.b = binary.BigEndian.AppendUint16(c.b, uint16(v))
}

func (c *copyRows) int4(v int32) {
	c.field(4)
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(v))
}

func (c *copyRows) int8(v int64) {
	c.field(8)
	c.b = binary.BigEndian.AppendUint64(c.b, uint64(v))
}

func (c *copyRows) float8(v float64) {
	c.field(8)
	c.b = binary.BigEndian.AppendUint64(c.b, math.Float64bits(v))
}

func (c *copyRows) boolean(v bool) {
	c.field(1)
	if v {
		c.b = append(c.b, 1)
	} else {
		c.b = append(c.b, 0)
	}
}

// bytea writes b; nil is NULL, as pgx writes a nil []byte.
func (c *copyRows) bytea(b []byte) {
	if b == nil {
		c.null()
		return
	}
	c.field(len(b))
	c.b = append(c.b, b...)
}

func (c *copyRows) uuid(u pgtype.UUID) {
	if !u.Valid {
		c.null()
		return
	}
	c.field(16)
	c.b = append(c.b, u.Bytes[:]...)
}

// time writes a timestamptz (microseconds, the nanoseconds truncated).
func (c *copyRows) time(t time.Time) {
	c.int8(t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - microsecFromUnixEpochToY2K)
}

// timestamptz writes t; invalid is NULL.
func (c *copyRows) timestamptz(t pgtype.Timestamptz) {
	switch {
	case !t.Valid:
		c.null()
	case t.InfinityModifier == pgtype.Infinity:
		c.int8(math.MaxInt64)
	case t.InfinityModifier == pgtype.NegativeInfinity:
		c.int8(math.MinInt64)
	default:
		c.time(t.Time)
	}
}

// textArray writes a one-dimensional text[] (nil as an empty array, which
// pgx writes as one dimension of length 0).
func (c *copyRows) textArray(ss []string) {
	size := 20 // ndim, NULL flag, element type, one dimension's length and lower bound
	for _, s := range ss {
		size += 4 + len(s)
	}
	c.field(size)
	c.b = binary.BigEndian.AppendUint32(c.b, 1)
	c.b = binary.BigEndian.AppendUint32(c.b, 0) // no NULL elements
	c.b = binary.BigEndian.AppendUint32(c.b, pgtype.TextOID)
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(ss)))
	c.b = binary.BigEndian.AppendUint32(c.b, 1) // lower bound
	for _, s := range ss {
		c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(s)))
		c.b = append(c.b, s...)
	}
}

// copyInto COPYs n rows into table's cols, each written by fill, using c's
// buffer (reset first). It returns the number of rows copied.
func (c *copyRows) copyInto(ctx context.Context, tx pgx.Tx, table string, cols []string, n int, fill func(c *copyRows, i int)) (int64, error) {
	if n == 0 {
		return 0, nil
	}
	c.reset()
	for i := range n {
		c.b = binary.BigEndian.AppendUint16(c.b, uint16(len(cols)))
		c.fields = 0
		fill(c, i)
		if c.fields != len(cols) {
			return 0, fmt.Errorf("copy %s: row %d has %d values for %d columns", table, i, c.fields, len(cols))
		}
	}
	c.b = binary.BigEndian.AppendUint16(c.b, 0xffff) // end of data
	quoted := make([]string, len(cols))
	for i, col := range cols {
		quoted[i] = pgx.Identifier{col}.Sanitize()
	}
	sql := "COPY " + pgx.Identifier{table}.Sanitize() + " (" + strings.Join(quoted, ", ") + ") FROM STDIN BINARY"
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(c.b), sql)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
