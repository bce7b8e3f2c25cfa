// Package truncate bounds text the services store or send (a job's last
// error, a dead letter's error header, a lease holder's name) without
// cutting a character in two: PostgreSQL refuses a text value that is not
// valid UTF-8, and a Kafka header or gRPC message carrying half a rune is
// garbled for whoever reads it.
package truncate

import "unicode/utf8"

// UTF8 returns s cut to at most n bytes, on a character boundary. A string
// that was not valid UTF-8 to begin with loses its invalid tail as well.
func UTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:max(n, 0)]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
