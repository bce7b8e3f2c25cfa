package tokencrypt

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, KeySize)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func TestParse(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	short := base64.StdEncoding.EncodeToString([]byte("too short"))
	tests := []struct {
		name    string
		spec    string
		wantIDs []string
		wantErr []string
	}{
		{name: "one key", spec: "k1:" + k1, wantIDs: []string{"k1"}},
		{name: "two keys, first is primary", spec: " k2:" + k2 + " , k1:" + k1, wantIDs: []string{"k2", "k1"}},
		{name: "url-safe unpadded", spec: "k1:" + strings.TrimRight(strings.NewReplacer("+", "-", "/", "_").Replace(k1), "="), wantIDs: []string{"k1"}},
		{name: "empty", spec: "", wantErr: []string{"no keys configured"}},
		{name: "missing id", spec: ":" + k1, wantErr: []string{"entry 1: want keyid:base64key"}},
		{name: "bad id", spec: "k 1:" + k1, wantErr: []string{"entry 1: key id must be"}},
		{name: "duplicate", spec: "k1:" + k1 + ",k1:" + k2, wantErr: []string{"entry 2 (k1): duplicate key id"}},
		{name: "short and bad base64 reported together", spec: "a:" + short + ",b:%%%", wantErr: []string{"entry 1 (a): key must be 32 bytes, got 9", "entry 2 (b): key is not valid base64"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := Parse(tc.spec)
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, w := range tc.wantErr {
					require.Contains(t, err.Error(), w)
				}
				require.NotContains(t, err.Error(), k1, "errors must never echo key material")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantIDs, kr.IDs())
			require.Equal(t, tc.wantIDs[0], kr.PrimaryID())
		})
	}
}

func TestSealOpen(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	old, err := Parse("old:" + k1)
	require.NoError(t, err)
	rotated, err := Parse("new:" + k2 + ",old:" + k1)
	require.NoError(t, err)
	onlyNew, err := Parse("new:" + k2)
	require.NoError(t, err)

	secret := []byte("refresh-token-value")
	aad := []byte("conn|u1|whoop|refresh")
	kid, sealed, err := old.Seal(secret, aad)
	require.NoError(t, err)
	require.Equal(t, "old", kid)
	require.False(t, bytes.Contains(sealed, secret), "ciphertext must not contain the plaintext")

	t.Run("same keyring opens", func(t *testing.T) {
		got, err := old.Open(kid, sealed, aad)
		require.NoError(t, err)
		require.Equal(t, secret, got)
	})
	t.Run("rotated keyring opens with the old key and seals with the new", func(t *testing.T) {
		got, err := rotated.Open(kid, sealed, aad)
		require.NoError(t, err)
		require.Equal(t, secret, got)
		kid2, _, err := rotated.Seal(secret, aad)
		require.NoError(t, err)
		require.Equal(t, "new", kid2)
	})
	t.Run("removed key is reported as unknown", func(t *testing.T) {
		_, err := onlyNew.Open(kid, sealed, aad)
		require.ErrorIs(t, err, ErrUnknownKey)
	})
	t.Run("other associated data does not open", func(t *testing.T) {
		_, err := old.Open(kid, sealed, []byte("conn|u2|whoop|refresh"))
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("tampered ciphertext does not open", func(t *testing.T) {
		bad := bytes.Clone(sealed)
		bad[len(bad)-1] ^= 1
		_, err := old.Open(kid, bad, aad)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("truncated ciphertext does not open", func(t *testing.T) {
		_, err := old.Open(kid, sealed[:5], aad)
		require.ErrorIs(t, err, ErrDecrypt)
	})
	t.Run("nonces differ", func(t *testing.T) {
		_, a, err := old.Seal(secret, aad)
		require.NoError(t, err)
		_, b, err := old.Seal(secret, aad)
		require.NoError(t, err)
		require.NotEqual(t, a, b)
	})
}
