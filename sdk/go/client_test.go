package mcpz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// A loopback server answering as the registry does; it records every request it is sent.
type fakeRegistry struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string // "METHOD /path"
	answer   func(w http.ResponseWriter, r *http.Request)
}

func newFake(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) *fakeRegistry {
	f := &fakeRegistry{answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		f.answer(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func TestErrorAnswersCarryTheMessageHintAndRequestID(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/whoami" {
			w.Header().Set("Retry-After", "7")
			writeJSON(w, 429, map[string]any{"error": map[string]any{"message": "slow down", "request_id": "r-2"}})
			return
		}
		writeJSON(w, 404, map[string]any{"error": map[string]any{"message": "no agent acme/nope", "hint": "mcpz market search", "request_id": "r-1"}})
	})
	client := New(f.URL, "")
	_, err := client.Info(context.Background(), "acme/nope")
	var apiErr *Error
	if !errors.As(err, &apiErr) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v", err)
	}
	if apiErr.Message != "no agent acme/nope" || apiErr.Hint != "mcpz market search" || apiErr.RequestID != "r-1" {
		t.Fatalf("got %+v", apiErr)
	}
	_, err = client.WhoAmI(context.Background())
	if !errors.As(err, &apiErr) || !errors.Is(err, ErrRateLimited) || apiErr.RetryAfter != 7*time.Second {
		t.Fatalf("got %v", err)
	}
	if _, err := client.Info(context.Background(), "no-slash"); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("got %v", err)
	}
}

func TestSearchAllFollowsThePages(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		offset := 0
		fmt.Sscan(r.URL.Query().Get("offset"), &offset)
		results := []map[string]any{{"name": fmt.Sprintf("acme/a%d", offset)}, {"name": fmt.Sprintf("acme/a%d", offset+1)}}
		writeJSON(w, 200, map[string]any{"query": r.URL.Query().Get("q"), "results": results, "more": offset < 4})
	})
	var names []string
	err := New(f.URL, "").SearchAll(context.Background(), "weather", SearchOptions{Limit: 2}, func(l Listing) bool {
		names = append(names, l.Name)
		return true
	})
	if err != nil || strings.Join(names, ",") != "acme/a0,acme/a1,acme/a2,acme/a3,acme/a4,acme/a5" {
		t.Fatalf("got %v, %v", names, err)
	}
}

// A gateway that answers initialize as JSON and tools/call as an SSE stream with a progress
// notification first, and checks the session id and token come back.
func TestMCPSessionSpeaksJSONAndSSE(t *testing.T) {
	var deleted bool
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			writeJSON(w, 401, map[string]any{"error": map[string]any{"message": "token required", "request_id": "r"}})
			return
		}
		if r.Method == "DELETE" {
			deleted = r.Header.Get("Mcp-Session-Id") == "s-1"
			w.WriteHeader(204)
			return
		}
		var msg struct {
			ID     *int   `json:"id"`
			Method string `json:"method"`
		}
		_ = json.NewDecoder(r.Body).Decode(&msg)
		if msg.Method != "initialize" && r.Header.Get("Mcp-Session-Id") != "s-1" {
			writeJSON(w, 404, map[string]any{"jsonrpc": "2.0", "id": nil, "error": map[string]any{"code": -32000, "message": "session expired"}})
			return
		}
		switch msg.Method {
		case "initialize":
			w.Header().Set("Mcp-Session-Id", "s-1")
			writeJSON(w, 200, map[string]any{"jsonrpc": "2.0", "id": *msg.ID, "result": map[string]any{"protocolVersion": "2025-06-18"}})
		case "notifications/initialized":
			w.WriteHeader(202)
		case "tools/call":
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n")
			fmt.Fprintf(w, "data: {\"jsonrpc\":\"2.0\",\"id\":%d,\n", *msg.ID)
			fmt.Fprint(w, "data: \"result\":{\"content\":[{\"type\":\"text\",\"text\":\"5\"}]}}\n\n")
		case "tools/list":
			writeJSON(w, 200, map[string]any{"jsonrpc": "2.0", "id": *msg.ID, "error": map[string]any{"code": -32601, "message": "nope"}})
		}
	})
	client := New(f.URL, "tok")
	result, err := client.Call(context.Background(), "acme/weather", "add", map[string]any{"a": 2, "b": 3})
	if err != nil || result.Text() != "5" || !deleted {
		t.Fatalf("got %+v, %v, deleted %v", result, err, deleted)
	}
	var rpcErr *RPCError
	if _, err := client.Tools(context.Background(), "acme/weather"); !errors.As(err, &rpcErr) || rpcErr.Code != -32601 {
		t.Fatalf("got %v", err)
	}
	if _, err := New(f.URL, "").Call(context.Background(), "acme/weather", "add", nil); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("got %v", err)
	}
}

// Every route the client calls is one the registry's OpenAPI document (sdk/openapi.json, kept
// current by tests/sdk/test_generated.py) has. The gateway (/mcp/...) is served outside the
// document, as docs/gateway.md says. Every exported method of *Client must be exercised here,
// so a new method cannot skip this check.
func TestEveryRouteTheClientCallsIsInTheOpenAPIDocument(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 404, map[string]any{"error": map[string]any{"message": "recorded", "request_id": "r"}})
	})
	client := New(f.URL, "tok")
	key, _ := ParsePrivateKey(strings.Repeat("11", 32))
	ctx := context.Background()
	calls := map[string]func(){
		"WhoAmI":         func() { client.WhoAmI(ctx) },
		"LoginWithToken": func() { client.LoginWithToken(ctx, "tok") },
		"SignIn":         func() { client.SignIn(ctx, key) },
		"Search":         func() { client.Search(ctx, "q", SearchOptions{}) },
		"SearchAll":      func() { client.SearchAll(ctx, "q", SearchOptions{}, func(Listing) bool { return true }) },
		"Info":           func() { client.Info(ctx, "acme/weather") },
		"Deployment":     func() { client.Deployment(ctx, "acme/weather") },
		"Usage":          func() { client.Usage(ctx, UsageOptions{}) },
		"Balance":        func() { client.Balance(ctx) },
		"GatewayURL":     func() {},
		"Connect":        func() {},
		"Tools":          func() {},
		"Call":           func() {},
	}
	clientType := reflect.TypeOf(client)
	for i := 0; i < clientType.NumMethod(); i++ {
		name := clientType.Method(i).Name
		call, ok := calls[name]
		if !ok {
			t.Errorf("Client.%s is not exercised by this test: add it", name)
			continue
		}
		call()
	}
	// The sign-in's second step, which the 404 above stopped before.
	client.do(ctx, "POST", "/v1/auth/login", nil, map[string]string{}, nil)

	templates := documentRoutes(t)
	seen := map[string]bool{}
	for _, request := range f.requests {
		seen[request] = true
	}
	var missing []string
	for request := range seen {
		if strings.Contains(request, " /mcp/") {
			continue
		}
		found := false
		for _, template := range templates {
			if template.MatchString(request) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, request)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("routes the client calls that the OpenAPI document lacks: %v", missing)
	}
	if len(seen) < 8 {
		t.Fatalf("too few routes recorded: %v", f.requests)
	}
}

// documentRoutes: "METHOD /path/{param}" of ../openapi.json as patterns over "METHOD /path".
func documentRoutes(t *testing.T) []*regexp.Regexp {
	data, err := os.ReadFile("../openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var document struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(data, &document); err != nil {
		t.Fatal(err)
	}
	param := regexp.MustCompile(`\\\{[^/]+?\\\}`)
	var out []*regexp.Regexp
	for path, operations := range document.Paths {
		for method := range operations {
			pattern := param.ReplaceAllString(regexp.QuoteMeta(path), `[^/]+`)
			out = append(out, regexp.MustCompile("^"+strings.ToUpper(method)+" "+pattern+"$"))
		}
	}
	return out
}

func TestLoginMessageIsMcpzsEIP4361Text(t *testing.T) {
	challenge := Challenge{Nonce: "k7Hq2ZpXw9LmRt4vBn3sQe8y", URI: "http://127.0.0.1:8080/v1/auth/login", ChainID: 324}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	got, err := LoginMessage("http://127.0.0.1:8080/", "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A", challenge, now)
	want := strings.Join([]string{
		"http://127.0.0.1:8080 wants you to sign in with your Ethereum account:",
		"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
		"",
		Statement,
		"",
		"URI: http://127.0.0.1:8080/v1/auth/login",
		"Version: 1",
		"Chain ID: 324",
		"Nonce: k7Hq2ZpXw9LmRt4vBn3sQe8y",
		"Issued At: 2025-06-01T12:00:00Z",
		"Expiration Time: 2025-06-01T12:05:00Z",
	}, "\n")
	if err != nil || got != want {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := LoginMessage("ftp://x", "0x", challenge, now); err == nil {
		t.Fatal("an ftp registry URL was accepted")
	}
}
