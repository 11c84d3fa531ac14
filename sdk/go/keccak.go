package mcpz

import (
	"encoding/binary"
	"math/bits"
)

// Keccak-256 as Ethereum uses it: the original Keccak padding (0x01), not SHA3-256's (0x06).
// Go's standard library has SHA3 only from Go 1.24, and never Keccak, so it is written out here
// and checked against known vectors in keccak_test.go.

var keccakRoundConstants = [24]uint64{
	0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
	0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
	0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
	0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
	0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
	0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
}

// keccakRotations[x+5*y] is the rho step's rotation of lane (x, y).
var keccakRotations = [25]int{
	0, 1, 62, 28, 27,
	36, 44, 6, 55, 20,
	3, 10, 43, 25, 39,
	41, 45, 15, 21, 8,
	18, 2, 61, 56, 14,
}

func keccakF1600(a *[25]uint64) {
	var c, d [5]uint64
	var b [25]uint64
	for round := 0; round < 24; round++ {
		// theta
		for x := 0; x < 5; x++ {
			c[x] = a[x] ^ a[x+5] ^ a[x+10] ^ a[x+15] ^ a[x+20]
		}
		for x := 0; x < 5; x++ {
			d[x] = c[(x+4)%5] ^ bits.RotateLeft64(c[(x+1)%5], 1)
		}
		for i := 0; i < 25; i++ {
			a[i] ^= d[i%5]
		}
		// rho and pi: lane (x, y) moves to (y, 2x+3y)
		for x := 0; x < 5; x++ {
			for y := 0; y < 5; y++ {
				b[y+5*((2*x+3*y)%5)] = bits.RotateLeft64(a[x+5*y], keccakRotations[x+5*y])
			}
		}
		// chi
		for y := 0; y < 5; y++ {
			for x := 0; x < 5; x++ {
				a[x+5*y] = b[x+5*y] ^ (^b[(x+1)%5+5*y] & b[(x+2)%5+5*y])
			}
		}
		// iota
		a[0] ^= keccakRoundConstants[round]
	}
}

// Keccak256 hashes data with Keccak-256 (Ethereum's hash).
func Keccak256(data ...[]byte) [32]byte {
	const rate = 136 // bytes: 1600 bits less the 512-bit capacity
	var state [25]uint64
	var message []byte
	for _, part := range data {
		message = append(message, part...)
	}
	padded := make([]byte, (len(message)/rate+1)*rate)
	copy(padded, message)
	padded[len(message)] ^= 0x01
	padded[len(padded)-1] ^= 0x80
	for off := 0; off < len(padded); off += rate {
		for i := 0; i < rate/8; i++ {
			state[i] ^= binary.LittleEndian.Uint64(padded[off+8*i:])
		}
		keccakF1600(&state)
	}
	var out [32]byte
	for i := 0; i < 4; i++ {
		binary.LittleEndian.PutUint64(out[8*i:], state[i])
	}
	return out
}
