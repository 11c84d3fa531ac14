// Package mcpz is the mcpz registry's Go client, standard library only: login with a token or
// Sign-In with Ethereum, market search, agent info, deployment status, usage and billing reads,
// and a minimal MCP Streamable HTTP client for calling deployed agents through the gateway.
package mcpz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Version is this client's version, sent as its MCP client info.
const Version = "0.2.0"

// Client talks to one registry. The zero HTTP uses http.DefaultClient.
type Client struct {
	Registry string // base URL, e.g. https://registry.example.com
	Token    string // API key or session token; sent as a bearer token
	HTTP     *http.Client
}

// New returns a client for registry with token (which may be empty for public reads).
func New(registry, token string) *Client {
	return &Client{Registry: strings.TrimRight(registry, "/"), Token: token}
}

// Error is an error answer of the registry, with the fields of its error body.
type Error struct {
	Status     int    // HTTP status
	Message    string // what is wrong
	Hint       string // what to do next, when the registry says
	RequestID  string // quote it in a report (also the X-Request-Id header)
	Code       string // a stable code for sign-in and signature refusals
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	text := e.Message
	if e.Hint != "" {
		text += " (" + e.Hint + ")"
	}
	if e.RequestID != "" {
		text += " [request " + e.RequestID + "]"
	}
	return text
}

// Sentinels for errors.Is: an *Error matches the one of its status.
var (
	ErrUnauthorized = errors.New("unauthorized") // 401
	ErrForbidden    = errors.New("forbidden")    // 403
	ErrNotFound     = errors.New("not found")    // 404
	ErrConflict     = errors.New("conflict")     // 409
	ErrRateLimited  = errors.New("rate limited") // 429
	ErrBadRequest   = errors.New("bad request")  // 400, 422
)

// Is makes errors.Is(err, ErrNotFound) and the like work.
func (e *Error) Is(target error) bool {
	switch e.Status {
	case 400, 422:
		return target == ErrBadRequest
	case 401:
		return target == ErrUnauthorized
	case 403:
		return target == ErrForbidden
	case 404:
		return target == ErrNotFound
	case 409:
		return target == ErrConflict
	case 429:
		return target == ErrRateLimited
	}
	return false
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// do sends one API request (body as JSON unless nil) and decodes a 2xx JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	target := strings.TrimRight(c.Registry, "/") + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return errorFrom(resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: the registry's answer is not the expected JSON: %w", method, path, err)
	}
	return nil
}

func errorFrom(resp *http.Response, data []byte) *Error {
	var body struct {
		Error struct {
			Message   string  `json:"message"`
			Hint      *string `json:"hint"`
			RequestID string  `json:"request_id"`
			Code      *string `json:"code"`
		} `json:"error"`
	}
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	if json.Unmarshal(data, &body) == nil && body.Error.Message != "" {
		e.Message = body.Error.Message
		if body.Error.Hint != nil {
			e.Hint = *body.Error.Hint
		}
		if body.Error.RequestID != "" {
			e.RequestID = body.Error.RequestID
		}
		if body.Error.Code != nil {
			e.Code = *body.Error.Code
		}
	} else {
		e.Message = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if seconds, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(seconds) * time.Second
	}
	return e
}

// splitName checks "namespace/name" enough to build a path from it.
func splitName(name string) (string, string, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", "", &Error{Status: 400, Message: fmt.Sprintf("agent name %q is not namespace/name", name)}
	}
	return url.PathEscape(parts[0]), url.PathEscape(parts[1]), nil
}

// WhoAmI is the account a token belongs to.
type WhoAmI struct {
	Account    string     `json:"account"`
	Namespaces []string   `json:"namespaces"`
	Scopes     []string   `json:"scopes"`
	ExpiresAt  *time.Time `json:"expires_at"`
}

// WhoAmI asks who the client's token belongs to.
func (c *Client) WhoAmI(ctx context.Context) (*WhoAmI, error) {
	var out WhoAmI
	return &out, c.do(ctx, "GET", "/v1/whoami", nil, nil, &out)
}

// LoginWithToken uses token from now on, and returns whom it belongs to (so a bad token fails here).
func (c *Client) LoginWithToken(ctx context.Context, token string) (*WhoAmI, error) {
	c.Token = token
	return c.WhoAmI(ctx)
}
