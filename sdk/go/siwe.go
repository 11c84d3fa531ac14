package mcpz

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Statement is the statement of mcpz's sign-in message, as the CLI writes it.
const Statement = "Sign in to the mcpz registry"

// Challenge is the registry's answer to POST /v1/auth/nonce.
type Challenge struct {
	Nonce     string    `json:"nonce"`
	Domain    string    `json:"domain"`
	URI       string    `json:"uri"`
	ChainID   int64     `json:"chain_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Session is a session token from a sign-in.
type Session struct {
	Token      string     `json:"token"`
	Account    string     `json:"account"`
	Address    string     `json:"address"`
	Namespaces []string   `json:"namespaces"`
	Scopes     []string   `json:"scopes"`
	ExpiresAt  *time.Time `json:"expires_at"`
}

// LoginMessage is the EIP-4361 message for challenge, bound to registry (the URL the caller chose,
// so a registry cannot have the key sign in to another site).
func LoginMessage(registry, address string, challenge Challenge, now time.Time) (string, error) {
	parts, err := url.Parse(registry)
	if err != nil || (parts.Scheme != "http" && parts.Scheme != "https") || parts.Host == "" {
		return "", fmt.Errorf("registry URL %q is not an http(s) URL", registry)
	}
	stamp := func(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }
	lines := []string{
		parts.Scheme + "://" + parts.Host + " wants you to sign in with your Ethereum account:",
		address,
		"",
		Statement,
		"",
		"URI: " + challenge.URI,
		"Version: 1",
		fmt.Sprintf("Chain ID: %d", challenge.ChainID),
		"Nonce: " + challenge.Nonce,
		"Issued At: " + stamp(now),
		"Expiration Time: " + stamp(now.Add(5*time.Minute)),
	}
	return strings.Join(lines, "\n"), nil
}

// SignIn is Sign-In with Ethereum: a nonce from the registry, the message signed with key
// (EIP-191 personal_sign), traded for a session token that the client then uses.
func (c *Client) SignIn(ctx context.Context, key *PrivateKey) (*Session, error) {
	var challenge Challenge
	if err := c.do(ctx, "POST", "/v1/auth/nonce", nil, map[string]string{"address": key.Address}, &challenge); err != nil {
		return nil, err
	}
	message, err := LoginMessage(c.Registry, key.Address, challenge, time.Now())
	if err != nil {
		return nil, err
	}
	body := map[string]string{"message": message, "signature": key.SignMessage(message)}
	var session Session
	if err := c.do(ctx, "POST", "/v1/auth/login", nil, body, &session); err != nil {
		return nil, err
	}
	c.Token = session.Token
	return &session, nil
}
