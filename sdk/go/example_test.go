package mcpz_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	mcpz "github.com/mcpz/mcpz/sdk/go"
)

// Search the market, call an agent through the gateway, read usage (docs/sdk.md shows the same
// in Python and TypeScript). Compiled and vetted, not run: it needs a registry.
func Example() {
	ctx := context.Background()
	client := mcpz.New(os.Getenv("MCPZ_REGISTRY"), os.Getenv("MCPZ_TOKEN"))

	page, err := client.Search(ctx, "weather", mcpz.SearchOptions{Limit: 5})
	if err != nil {
		log.Fatal(err)
	}
	for _, listing := range page.Results {
		fmt.Println(listing.Name, listing.Pricing)
	}

	result, err := client.Call(ctx, "acme/weather", "add", map[string]any{"a": 2, "b": 3})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("2 + 3 =", result.Text())

	usage, err := client.Usage(ctx, mcpz.UsageOptions{Agent: "acme/weather", Since: "1h"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(usage.Calls(), "call(s) counted so far")
}

// Sign-In with Ethereum with a private key: the session token is kept in the client.
func ExampleClient_SignIn() {
	key, err := mcpz.ParsePrivateKey(os.Getenv("MCPZ_TEST_KEY"))
	if err != nil {
		log.Fatal(err)
	}
	client := mcpz.New(os.Getenv("MCPZ_REGISTRY"), "")
	session, err := client.SignIn(context.Background(), key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("signed in as", session.Account)
}

// Errors carry the registry's message, hint and request id; errors.Is tells them apart.
func ExampleError() {
	client := mcpz.New(os.Getenv("MCPZ_REGISTRY"), os.Getenv("MCPZ_TOKEN"))
	_, err := client.Info(context.Background(), "acme/no-such-agent")
	var apiErr *mcpz.Error
	if errors.Is(err, mcpz.ErrNotFound) && errors.As(err, &apiErr) {
		fmt.Println("not found:", apiErr.Message, "request", apiErr.RequestID)
	}
}

// A session of your own: several calls over one Mcp-Session-Id.
func ExampleMCPSession() {
	ctx := context.Background()
	client := mcpz.New(os.Getenv("MCPZ_REGISTRY"), os.Getenv("MCPZ_TOKEN"))
	session, err := client.Connect(ctx, "acme/weather")
	if err != nil {
		log.Fatal(err)
	}
	defer session.Close()
	tools, err := session.ListTools(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, tool := range tools {
		fmt.Println(tool.Name, "-", tool.Description)
	}
}
