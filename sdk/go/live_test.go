package mcpz

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// Against a live registry with a deployed agent: tests/sdk/test_sdks.py starts one and passes
// MCPZ_REGISTRY, MCPZ_TOKEN (scopes read and call), MCPZ_AGENT (deployed, with the template's
// `add` tool) and MCPZ_TEST_KEY (a private key to sign in with). Skipped without them.
func live(t *testing.T) (registry, token, agent, key string) {
	registry, token = os.Getenv("MCPZ_REGISTRY"), os.Getenv("MCPZ_TOKEN")
	agent, key = os.Getenv("MCPZ_AGENT"), os.Getenv("MCPZ_TEST_KEY")
	if registry == "" || token == "" || agent == "" || key == "" {
		t.Skip("no live registry (MCPZ_REGISTRY, MCPZ_TOKEN, MCPZ_AGENT, MCPZ_TEST_KEY)")
	}
	return
}

func TestLiveLogin(t *testing.T) {
	registry, token, _, keyHex := live(t)
	ctx := context.Background()
	client := New(registry, "")
	me, err := client.LoginWithToken(ctx, token)
	if err != nil || !contains(me.Scopes, "call") {
		t.Fatalf("got %+v, %v", me, err)
	}
	if _, err := New(registry, "mcpz_nonsense").WhoAmI(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("a bad token: %v", err)
	}
	key, err := ParsePrivateKey(keyHex)
	if err != nil {
		t.Fatal(err)
	}
	wallet := New(registry, "")
	session, err := wallet.SignIn(ctx, key)
	if err != nil || !strings.EqualFold(session.Address, key.Address) {
		t.Fatalf("sign-in: %+v, %v", session, err)
	}
	who, err := wallet.WhoAmI(ctx)
	if err != nil || who.Account != session.Account {
		t.Fatalf("whoami after sign-in: %+v, %v", who, err)
	}
}

func TestLiveSearchInfoDeploymentCallUsage(t *testing.T) {
	registry, token, agent, _ := live(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := New(registry, token)
	page, err := client.Search(ctx, strings.Split(agent, "/")[1], SearchOptions{})
	if err != nil || !hasListing(page.Results, agent) {
		t.Fatalf("search: %+v, %v", page, err)
	}
	info, err := client.Info(ctx, agent)
	if err != nil || info.Latest == nil {
		t.Fatalf("info: %+v, %v", info, err)
	}
	if _, err := client.Info(ctx, "acme/no-such-agent"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("info of a missing agent: %v", err)
	}
	deployment, err := client.Deployment(ctx, agent)
	if err != nil || deployment.State != "ready" || deployment.Ready < 1 {
		t.Fatalf("deployment: %+v, %v", deployment, err)
	}
	session, err := client.Connect(ctx, agent)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if session.SessionID() == "" {
		t.Fatal("no Mcp-Session-Id")
	}
	tools, err := session.ListTools(ctx)
	if err != nil || !hasTool(tools, "add") {
		t.Fatalf("tools: %+v, %v", tools, err)
	}
	result, err := session.CallTool(ctx, "add", map[string]any{"a": 2, "b": 3})
	if err != nil || result.IsError || result.Text() != "5" {
		t.Fatalf("call: %+v, %v", result, err)
	}
	calls := 0
	for i := 0; i < 50 && calls == 0; i++ {
		usage, err := client.Usage(ctx, UsageOptions{Agent: agent, Since: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		if calls = usage.Calls(); calls == 0 {
			time.Sleep(200 * time.Millisecond) // usage is written in batches
		}
	}
	if calls < 1 {
		t.Fatal("the call was not counted")
	}
}

func contains(items []string, want string) bool {
	for _, item := range items {
		if item == want {
			return true
		}
	}
	return false
}

func hasListing(listings []Listing, name string) bool {
	for _, l := range listings {
		if l.Name == name {
			return true
		}
	}
	return false
}

func hasTool(tools []Tool, name string) bool {
	for _, tool := range tools {
		if tool.Name == name {
			return true
		}
	}
	return false
}
