package latestcache

import (
	"encoding/json"
	"strconv"
)

// decodeEntry parses a cached entry. The entries this package writes
// (encoding/json of entry: no whitespace, known fields, numbers and plain
// strings) take a direct path that allocates only the strings; anything
// else (escapes in strings, whitespace, unknown fields, malformed input)
// goes through encoding/json, whose answer is the reference.
func decodeEntry(s string) (entry, error) {
	if e, ok := decodeEntryFast(s); ok {
		return e, nil
	}
	var e entry
	err := json.Unmarshal([]byte(s), &e)
	return e, err
}

// decodeEntryFast reports false for anything it does not parse exactly as
// encoding/json would.
func decodeEntryFast(s string) (e entry, ok bool) {
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return entry{}, false
	}
	i := 1
	if s[i] == '}' {
		return e, i == len(s)-1
	}
	for {
		// "name":
		name, j, ok := plainString(s, i)
		if !ok || j >= len(s) || s[j] != ':' {
			return entry{}, false
		}
		i = j + 1
		switch name {
		case "m", "r", "dn", "dm", "db":
			v, j, ok := plainString(s, i)
			if !ok {
				return entry{}, false
			}
			switch name {
			case "m":
				e.M = v
			case "r":
				e.R = v
			case "dn":
				e.DN = v
			case "dm":
				e.DM = v
			case "db":
				e.DB = v
			}
			i = j
		case "v", "t", "st", "s", "q":
			j := numberEnd(s, i)
			if j == i {
				return entry{}, false
			}
			num := s[i:j]
			switch name {
			case "v":
				f, err := strconv.ParseFloat(num, 64)
				if err != nil {
					return entry{}, false
				}
				e.V = f
			case "t", "st":
				n, err := strconv.ParseInt(num, 10, 64)
				if err != nil {
					return entry{}, false
				}
				if name == "t" {
					e.T = n
				} else {
					e.ST = n
				}
			case "s", "q":
				n, err := strconv.ParseInt(num, 10, 32)
				if err != nil {
					return entry{}, false
				}
				if name == "s" {
					e.S = int32(n)
				} else {
					e.Q = int32(n)
				}
			}
			i = j
		default:
			return entry{}, false
		}
		if i >= len(s) {
			return entry{}, false
		}
		switch s[i] {
		case ',':
			i++
		case '}':
			return e, i == len(s)-1
		default:
			return entry{}, false
		}
	}
}

// plainString reads a JSON string at s[i] without escapes or control
// characters (and valid UTF-8 as far as bytes below 0x80 go: anything
// above goes to encoding/json, which replaces invalid sequences). It
// returns the string and the index after its closing quote.
func plainString(s string, i int) (string, int, bool) {
	if i >= len(s) || s[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '"':
			return s[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", 0, false
		}
	}
	return "", 0, false
}

// numberEnd returns the end of the JSON number at s[i] (i itself when
// there is none), following the JSON grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func numberEnd(s string, i int) int {
	j := i
	if j < len(s) && s[j] == '-' {
		j++
	}
	switch {
	case j < len(s) && s[j] == '0':
		j++
	case j < len(s) && s[j] >= '1' && s[j] <= '9':
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
	default:
		return i
	}
	if j < len(s) && s[j] == '.' {
		k := j + 1
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k == j+1 {
			return i
		}
		j = k
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		k := j + 1
		if k < len(s) && (s[k] == '+' || s[k] == '-') {
			k++
		}
		d := k
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k == d {
			return i
		}
		j = k
	}
	return j
}
