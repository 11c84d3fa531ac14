package mcpz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// The MCP revision this client asks for; the gateway speaks 2024-11-05 to 2025-11-25.
const mcpProtocolVersion = "2025-06-18"

// RPCError is a JSON-RPC error from the gateway or the agent (docs/gateway.md lists the codes).
type RPCError struct {
	Status  int             // the HTTP status it came with
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string { return fmt.Sprintf("%s (JSON-RPC %d)", e.Message, e.Code) }

// Tool is one tool a deployed agent offers.
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"inputSchema"`
}

// Content is one part of a tool's result; Text is set for text parts.
type Content struct {
	Type string `json:"type"`
	Text string `json:"text,omitempty"`
}

// ToolResult is the answer of tools/call.
type ToolResult struct {
	Content           []Content       `json:"content"`
	IsError           bool            `json:"isError"`
	StructuredContent json.RawMessage `json:"structuredContent,omitempty"`
}

// Text joins the result's text parts.
func (r *ToolResult) Text() string {
	var parts []string
	for _, c := range r.Content {
		if c.Type == "text" {
			parts = append(parts, c.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// MCPSession is an MCP session with one deployed agent over Streamable HTTP through the gateway.
// Close it when done. Not safe for concurrent use.
type MCPSession struct {
	client    *Client
	url       string
	sessionID string
	protocol  string
	nextID    int
}

// GatewayURL is an agent's gateway endpoint; "ns/name@1.2.0" pins a version during a rollout.
func (c *Client) GatewayURL(name string) (string, error) {
	base, version, pinned := strings.Cut(name, "@")
	ns, agent, err := splitName(base)
	if err != nil {
		return "", err
	}
	target := strings.TrimRight(c.Registry, "/") + "/mcp/" + ns + "/" + agent
	if pinned {
		target += "@" + version
	}
	return target, nil
}

// Connect opens an MCP session with a deployed agent: initialize, then notifications/initialized.
func (c *Client) Connect(ctx context.Context, name string) (*MCPSession, error) {
	target, err := c.GatewayURL(name)
	if err != nil {
		return nil, err
	}
	s := &MCPSession{client: c, url: target}
	var init struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	params := map[string]any{
		"protocolVersion": mcpProtocolVersion,
		"capabilities":    map[string]any{},
		"clientInfo":      map[string]string{"name": "mcpz-go", "version": Version},
	}
	if err := s.Request(ctx, "initialize", params, &init); err != nil {
		return nil, err
	}
	s.protocol = init.ProtocolVersion
	if err := s.Notify(ctx, "notifications/initialized", nil); err != nil {
		return nil, err
	}
	return s, nil
}

// SessionID is the gateway's Mcp-Session-Id for this session.
func (s *MCPSession) SessionID() string { return s.sessionID }

// ListTools lists the agent's tools, following nextCursor.
func (s *MCPSession) ListTools(ctx context.Context) ([]Tool, error) {
	var tools []Tool
	params := map[string]any{}
	for {
		var page struct {
			Tools      []Tool `json:"tools"`
			NextCursor string `json:"nextCursor"`
		}
		if err := s.Request(ctx, "tools/list", params, &page); err != nil {
			return nil, err
		}
		tools = append(tools, page.Tools...)
		if page.NextCursor == "" {
			return tools, nil
		}
		params = map[string]any{"cursor": page.NextCursor}
	}
}

// CallTool makes one tools/call (metered). A tool that reports an error returns a result with
// IsError set, not an error: the tool's text says what went wrong.
func (s *MCPSession) CallTool(ctx context.Context, tool string, args map[string]any) (*ToolResult, error) {
	if args == nil {
		args = map[string]any{}
	}
	var result ToolResult
	if err := s.Request(ctx, "tools/call", map[string]any{"name": tool, "arguments": args}, &result); err != nil {
		return nil, err
	}
	return &result, nil
}

// Close ends the session (DELETE), which also cancels its calls.
func (s *MCPSession) Close() error {
	if s.sessionID == "" {
		return nil
	}
	req, err := http.NewRequest("DELETE", s.url, nil)
	if err != nil {
		return err
	}
	s.headers(req)
	resp, err := s.client.httpClient().Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	s.sessionID = ""
	return nil
}

func (s *MCPSession) headers(req *http.Request) {
	req.Header.Set("Accept", "application/json, text/event-stream")
	if s.client.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.client.Token)
	}
	if s.sessionID != "" {
		req.Header.Set("Mcp-Session-Id", s.sessionID)
	}
	if s.protocol != "" {
		req.Header.Set("MCP-Protocol-Version", s.protocol)
	}
}

// Notify sends a JSON-RPC notification (no answer expected beyond 202).
func (s *MCPSession) Notify(ctx context.Context, method string, params any) error {
	message := map[string]any{"jsonrpc": "2.0", "method": method}
	if params != nil {
		message["params"] = params
	}
	resp, err := s.post(ctx, message)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return s.httpError(resp)
	}
	return nil
}

// Request sends one JSON-RPC request and decodes its result into out; the answer may be JSON
// or an SSE stream (whose notifications are skipped until the response arrives).
func (s *MCPSession) Request(ctx context.Context, method string, params, out any) error {
	s.nextID++
	id := s.nextID
	resp, err := s.post(ctx, map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return s.httpError(resp)
	}
	if session := resp.Header.Get("Mcp-Session-Id"); session != "" {
		s.sessionID = session
	}
	mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var message []byte
	if mediaType == "text/event-stream" {
		message, err = responseFromSSE(resp.Body, id)
	} else {
		message, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	}
	if err != nil {
		return err
	}
	return decodeResponse(message, resp.StatusCode, out)
}

func (s *MCPSession) post(ctx context.Context, message any) (*http.Response, error) {
	data, err := json.Marshal(message)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", s.url, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	s.headers(req)
	req.Header.Set("Content-Type", "application/json")
	return s.client.httpClient().Do(req)
}

// httpError: the gateway's refusals are JSON-RPC errors (404 no deployment, 503 no replica, 429
// tier); anything else (401, 403 from the registry) is the registry's error body.
func (s *MCPSession) httpError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var envelope struct {
		Error *RPCError `json:"error"`
	}
	if json.Unmarshal(data, &envelope) == nil && envelope.Error != nil && envelope.Error.Code != 0 {
		envelope.Error.Status = resp.StatusCode
		return envelope.Error
	}
	return errorFrom(resp, data)
}

func decodeResponse(message []byte, status int, out any) error {
	var envelope struct {
		Result json.RawMessage `json:"result"`
		Error  *RPCError       `json:"error"`
	}
	if err := json.Unmarshal(message, &envelope); err != nil {
		return fmt.Errorf("the gateway's answer is not JSON-RPC: %w", err)
	}
	if envelope.Error != nil {
		envelope.Error.Status = status
		return envelope.Error
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(envelope.Result, out)
}

// responseFromSSE reads server-sent events until the JSON-RPC response with id.
func responseFromSSE(body io.Reader, id int) ([]byte, error) {
	scanner := bufio.NewScanner(body)
	scanner.Buffer(make([]byte, 64*1024), 64<<20)
	var data []string
	for scanner.Scan() {
		line := scanner.Text()
		if line != "" {
			if strings.HasPrefix(line, "data:") {
				data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			}
			continue
		}
		// A blank line ends an event.
		if len(data) > 0 {
			event := []byte(strings.Join(data, "\n"))
			data = nil
			var probe struct {
				ID json.RawMessage `json:"id"`
			}
			if json.Unmarshal(event, &probe) == nil && string(probe.ID) == fmt.Sprint(id) {
				return event, nil
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(data) > 0 {
		return []byte(strings.Join(data, "\n")), nil
	}
	return nil, fmt.Errorf("the event stream ended without the response to request %d", id)
}

// Tools lists a deployed agent's tools in a session of their own.
func (c *Client) Tools(ctx context.Context, name string) ([]Tool, error) {
	s, err := c.Connect(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.ListTools(ctx)
}

// Call makes one tools/call through the gateway in a session of its own.
func (c *Client) Call(ctx context.Context, name, tool string, args map[string]any) (*ToolResult, error) {
	s, err := c.Connect(ctx, name)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.CallTool(ctx, tool, args)
}
