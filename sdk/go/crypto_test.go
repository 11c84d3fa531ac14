package mcpz

import (
	"encoding/hex"
	"strings"
	"testing"
)

func TestKeccak256KnownVectors(t *testing.T) {
	cases := map[string]string{
		"":                       "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470",
		"abc":                    "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45",
		strings.Repeat("a", 200): "96ea54061def936c4be90b518992fdc6f12f535068a256229aca54267b4d084d", // > one 136-byte block
	}
	for input, want := range cases {
		got := Keccak256([]byte(input))
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("keccak256(%d bytes) = %x, want %s", len(input), got, want)
		}
	}
}

// The signatures eth-account makes for the same keys and message (RFC 6979 nonces, low s).
func TestPersonalSignMatchesEthAccount(t *testing.T) {
	cases := []struct{ key, address, signature string }{
		{
			"0x0000000000000000000000000000000000000000000000000000000000000001",
			"0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
			"0x5b3a97ff2515a75724decd3a1e4c0d99d96e7e07389aec517e992aaf97c305ce753efa19223bd57cb882db7802cdb0817767670e30f649023a62abe1364b29651c",
		},
		{
			"0x1111111111111111111111111111111111111111111111111111111111111111",
			"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
			"0x0ecfe137792ab1f005c710b1daa8753347a4fde82e4dda256ddfd628de6924436d54ad2e03520f163baa8cb21b7a203910d21451c564fe882c09884f42ec38061c",
		},
		{
			"4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
			"0x2c7536E3605D9C16a7a3D7b1898e529396a65c23",
			"0xdc2ebf7bb2a11313c33c282b27b4f414d31d20fc1af4ed142ace9c7c80b5ff6c44e6fff0b5fcf0bd171c2d91b72f50343227cf2a94894519979baf0f8acf7e251c",
		},
	}
	for _, c := range cases {
		key, err := ParsePrivateKey(c.key)
		if err != nil {
			t.Fatal(err)
		}
		if key.Address != c.address {
			t.Errorf("address of %s = %s, want %s", c.key, key.Address, c.address)
		}
		if got := key.SignMessage("hello mcpz"); got != c.signature {
			t.Errorf("signature with %s = %s, want %s", c.key, got, c.signature)
		}
	}
}

func TestParsePrivateKeyRefusesBadKeys(t *testing.T) {
	for _, bad := range []string{"", "0x12", strings.Repeat("0", 64), strings.Repeat("f", 64), strings.Repeat("zz", 32)} {
		if _, err := ParsePrivateKey(bad); err == nil {
			t.Errorf("ParsePrivateKey(%q) succeeded", bad)
		}
	}
}
