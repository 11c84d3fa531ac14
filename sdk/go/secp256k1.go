package mcpz

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// secp256k1 signing for Ethereum's personal_sign, with math/big: Go's crypto/elliptic supports
// only curves with a = -3, and secp256k1 has a = 0. Nonces are deterministic (RFC 6979, HMAC-SHA256)
// and s is low (EIP-2), so signatures equal those of eth-account and viem for the same key and
// message (secp256k1_test.go checks that). Not constant-time: fine for a test key or a CI signer,
// not for a key on a machine shared with an attacker who can time it.

var (
	curveP, _  = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F", 16)
	curveN, _  = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)
	curveGx, _ = new(big.Int).SetString("79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798", 16)
	curveGy, _ = new(big.Int).SetString("483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8", 16)
	halfN      = new(big.Int).Rsh(curveN, 1)
)

// point is an affine point; nil x means the point at infinity.
type point struct{ x, y *big.Int }

func (p point) infinity() bool { return p.x == nil }

func mod(v *big.Int) *big.Int { return v.Mod(v, curveP) }

func pointAdd(a, b point) point {
	if a.infinity() {
		return b
	}
	if b.infinity() {
		return a
	}
	var slope *big.Int
	if a.x.Cmp(b.x) == 0 {
		if new(big.Int).Add(a.y, b.y).Cmp(curveP) == 0 || a.y.Sign() == 0 {
			return point{}
		}
		// doubling: (3x²) / (2y)
		num := new(big.Int).Mul(a.x, a.x)
		num.Mul(num, big.NewInt(3))
		den := new(big.Int).Lsh(a.y, 1)
		slope = mod(num.Mul(num, den.ModInverse(den, curveP)))
	} else {
		num := new(big.Int).Sub(b.y, a.y)
		den := mod(new(big.Int).Sub(b.x, a.x))
		slope = mod(num.Mul(num, den.ModInverse(den, curveP)))
	}
	x := new(big.Int).Mul(slope, slope)
	x = mod(x.Sub(x, a.x).Sub(x, b.x))
	y := new(big.Int).Sub(a.x, x)
	y = mod(y.Mul(y, slope).Sub(y, a.y))
	return point{x, y}
}

func scalarMult(k *big.Int, p point) point {
	result := point{}
	for i := k.BitLen() - 1; i >= 0; i-- {
		result = pointAdd(result, result)
		if k.Bit(i) == 1 {
			result = pointAdd(result, p)
		}
	}
	return result
}

// PrivateKey is a secp256k1 private key: an Ethereum account that can sign in.
type PrivateKey struct {
	d       *big.Int
	public  point
	Address string // EIP-55 checksummed
}

// ParsePrivateKey reads a key from 64 hex digits (0x optional).
func ParsePrivateKey(text string) (*PrivateKey, error) {
	raw, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(text), "0x"))
	if err != nil || len(raw) != 32 {
		return nil, errors.New("a private key is 32 bytes as 64 hex digits")
	}
	d := new(big.Int).SetBytes(raw)
	if d.Sign() == 0 || d.Cmp(curveN) >= 0 {
		return nil, errors.New("the private key is out of the curve's range")
	}
	public := scalarMult(d, point{curveGx, curveGy})
	var xy [64]byte
	public.x.FillBytes(xy[:32])
	public.y.FillBytes(xy[32:])
	hash := Keccak256(xy[:])
	return &PrivateKey{d: d, public: public, Address: ChecksumAddress(hash[12:])}, nil
}

// ChecksumAddress writes a 20-byte address in EIP-55 mixed case.
func ChecksumAddress(address []byte) string {
	lower := hex.EncodeToString(address)
	hash := Keccak256([]byte(lower))
	out := []byte(lower)
	for i, c := range out {
		nibble := hash[i/2] >> (4 * (1 - uint(i)%2)) & 0x0f
		if c >= 'a' && nibble >= 8 {
			out[i] = c - 'a' + 'A'
		}
	}
	return "0x" + string(out)
}

// SignHash signs a 32-byte hash: r, s, v (27 or 28), 65 bytes, as Ethereum writes signatures.
func (key *PrivateKey) SignHash(hash [32]byte) [65]byte {
	z := new(big.Int).SetBytes(hash[:])
	k := rfc6979Nonce(key.d, hash)
	for {
		r1 := scalarMult(k, point{curveGx, curveGy})
		r := new(big.Int).Mod(r1.x, curveN)
		if r.Sign() != 0 {
			s := new(big.Int).Mul(r, key.d)
			s.Add(s, z)
			s.Mul(s, new(big.Int).ModInverse(k, curveN))
			s.Mod(s, curveN)
			if s.Sign() != 0 {
				recovery := byte(r1.y.Bit(0))
				if r1.x.Cmp(curveN) >= 0 {
					recovery |= 2
				}
				if s.Cmp(halfN) > 0 {
					s.Sub(curveN, s)
					recovery ^= 1
				}
				var sig [65]byte
				r.FillBytes(sig[:32])
				s.FillBytes(sig[32:64])
				sig[64] = 27 + recovery
				return sig
			}
		}
		k.Add(k, big.NewInt(1)) // unreachable in practice (probability ~2^-128)
	}
}

// rfc6979Nonce is RFC 6979 section 3.2's k for HMAC-SHA256 and a 256-bit order.
func rfc6979Nonce(d *big.Int, hash [32]byte) *big.Int {
	var x, h [32]byte
	d.FillBytes(x[:])
	new(big.Int).Mod(new(big.Int).SetBytes(hash[:]), curveN).FillBytes(h[:])
	v := make([]byte, 32)
	for i := range v {
		v[i] = 0x01
	}
	k := make([]byte, 32)
	mac := func(key []byte, parts ...[]byte) []byte {
		m := hmac.New(sha256.New, key)
		for _, p := range parts {
			m.Write(p)
		}
		return m.Sum(nil)
	}
	k = mac(k, v, []byte{0x00}, x[:], h[:])
	v = mac(k, v)
	k = mac(k, v, []byte{0x01}, x[:], h[:])
	v = mac(k, v)
	for {
		v = mac(k, v)
		candidate := new(big.Int).SetBytes(v)
		if candidate.Sign() > 0 && candidate.Cmp(curveN) < 0 {
			return candidate
		}
		k = mac(k, v, []byte{0x00})
		v = mac(k, v)
	}
}

// SignMessage is EIP-191 personal_sign: the hash of "\x19Ethereum Signed Message:\n" + length +
// message, signed; returned as 0x-hex, as wallets return it.
func (key *PrivateKey) SignMessage(message string) string {
	prefix := fmt.Sprintf("\x19Ethereum Signed Message:\n%d", len(message))
	sig := key.SignHash(Keccak256([]byte(prefix), []byte(message)))
	return "0x" + hex.EncodeToString(sig[:])
}
