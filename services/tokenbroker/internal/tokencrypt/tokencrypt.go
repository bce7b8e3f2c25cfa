// Package tokencrypt encrypts OAuth tokens at rest with AES-256-GCM.
//
// Every ciphertext is stored together with the id of the key that sealed it,
// so keys can rotate: the first configured key seals everything new, every
// configured key can still open what it sealed, and a background pass (or
// simply the next write) moves old rows to the first key. Once nothing
// refers to an old key any more it can be removed from the configuration.
//
// Callers pass associated data that names where a ciphertext belongs (the
// connection and the column). GCM authenticates it, so a ciphertext copied
// into another row or column does not open: a database writer cannot swap
// one user's refresh token into another user's connection.
package tokencrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the AES-256 key length in bytes.
const KeySize = 32

// maxKeyIDLen keeps key ids short: they are stored with every row.
const maxKeyIDLen = 32

// ErrUnknownKey means a ciphertext names a key id that is not configured.
var ErrUnknownKey = errors.New("ciphertext sealed with a key that is not configured")

// ErrDecrypt means a ciphertext did not authenticate: wrong key, tampered
// bytes or associated data of another row.
var ErrDecrypt = errors.New("ciphertext does not authenticate")

type key struct {
	id   string
	aead cipher.AEAD
}

// Keyring holds the configured keys; the first one seals. It is safe for
// concurrent use (cipher.AEAD from crypto/aes is).
type Keyring struct {
	keys []key
	byID map[string]cipher.AEAD
}

// Parse reads "keyid:base64(32 bytes),keyid2:...". Errors name the entry by
// position and id, never by key material.
func Parse(spec string) (*Keyring, error) {
	kr := &Keyring{byID: map[string]cipher.AEAD{}}
	var errs []error
	for i, raw := range strings.Split(spec, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		id, b64, ok := strings.Cut(raw, ":")
		id, b64 = strings.TrimSpace(id), strings.TrimSpace(b64)
		switch {
		case !ok || id == "":
			errs = append(errs, fmt.Errorf("entry %d: want keyid:base64key", i+1))
			continue
		case !validKeyID(id):
			errs = append(errs, fmt.Errorf("entry %d: key id must be 1-%d characters of a-z, A-Z, 0-9, '-', '_'", i+1, maxKeyIDLen))
			continue
		case kr.byID[id] != nil:
			errs = append(errs, fmt.Errorf("entry %d (%s): duplicate key id", i+1, id))
			continue
		}
		material, err := decodeKey(b64)
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %d (%s): key is not valid base64", i+1, id))
			continue
		}
		if len(material) != KeySize {
			errs = append(errs, fmt.Errorf("entry %d (%s): key must be %d bytes, got %d", i+1, id, KeySize, len(material)))
			continue
		}
		aead, err := newAEAD(material)
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %d (%s): %w", i+1, id, err))
			continue
		}
		kr.keys = append(kr.keys, key{id: id, aead: aead})
		kr.byID[id] = aead
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(kr.keys) == 0 {
		return nil, errors.New("no keys configured")
	}
	return kr, nil
}

// decodeKey accepts standard and URL-safe base64, padded or not: operators
// generate keys with different tools and the alphabet carries no meaning here.
func decodeKey(s string) ([]byte, error) {
	var lastErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			return b, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func validKeyID(id string) bool {
	if len(id) == 0 || len(id) > maxKeyIDLen {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func newAEAD(material []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, fmt.Errorf("aes key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return aead, nil
}

// PrimaryID is the id of the key that seals new data.
func (k *Keyring) PrimaryID() string { return k.keys[0].id }

// IDs lists the configured key ids, primary first.
func (k *Keyring) IDs() []string {
	out := make([]string, len(k.keys))
	for i, key := range k.keys {
		out[i] = key.id
	}
	return out
}

// Has reports whether keyID is configured.
func (k *Keyring) Has(keyID string) bool { return k.byID[keyID] != nil }

// Seal encrypts plaintext with the primary key under a fresh random nonce
// and returns the key id and nonce||ciphertext. Random 96-bit nonces are
// safe here: a key seals far fewer than the 2^32 messages GCM allows.
func (k *Keyring) Seal(plaintext, aad []byte) (keyID string, sealed []byte, err error) {
	p := k.keys[0]
	nonce := make([]byte, p.aead.NonceSize(), p.aead.NonceSize()+len(plaintext)+p.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, fmt.Errorf("read nonce: %w", err)
	}
	return p.id, p.aead.Seal(nonce, nonce, plaintext, aad), nil
}

// Open decrypts what Seal returned. It fails with ErrUnknownKey when keyID is
// not configured and ErrDecrypt when the data does not authenticate.
func (k *Keyring) Open(keyID string, sealed, aad []byte) ([]byte, error) {
	aead := k.byID[keyID]
	if aead == nil {
		return nil, fmt.Errorf("key %q: %w", keyID, ErrUnknownKey)
	}
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, ErrDecrypt
	}
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return plain, nil
}
