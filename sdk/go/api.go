package mcpz

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
	"time"
)

// Listing is one market search result.
type Listing struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Kind        string   `json:"kind"`
	Pricing     string   `json:"pricing"`
	Rating      *float64 `json:"rating"`
	Calls30d    int      `json:"calls_30d"`
	Tags        []string `json:"tags"`
	Version     string   `json:"version"`
}

// SearchPage is one page of market search results; More says another follows.
type SearchPage struct {
	Query       string    `json:"query"`
	Corrected   bool      `json:"corrected"`
	Results     []Listing `json:"results"`
	Suggestions []string  `json:"suggestions"`
	More        bool      `json:"more"`
}

// SearchOptions narrow a search; zero values are left out.
type SearchOptions struct {
	Kind, Tag, Namespace, Sort string
	Free                       *bool
	Limit, Offset              int
}

// Search returns one page of the market's listings matching q.
func (c *Client) Search(ctx context.Context, q string, opts SearchOptions) (*SearchPage, error) {
	query := url.Values{"q": {q}}
	for key, value := range map[string]string{"kind": opts.Kind, "tag": opts.Tag, "namespace": opts.Namespace, "sort": opts.Sort} {
		if value != "" {
			query.Set(key, value)
		}
	}
	if opts.Free != nil {
		query.Set("free", strconv.FormatBool(*opts.Free))
	}
	if opts.Limit > 0 {
		query.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset > 0 {
		query.Set("offset", strconv.Itoa(opts.Offset))
	}
	var out SearchPage
	return &out, c.do(ctx, "GET", "/v1/market/search", query, nil, &out)
}

// SearchAll walks every page of a search, calling each for every listing until it returns false.
func (c *Client) SearchAll(ctx context.Context, q string, opts SearchOptions, each func(Listing) bool) error {
	for {
		page, err := c.Search(ctx, q, opts)
		if err != nil {
			return err
		}
		for _, listing := range page.Results {
			if !each(listing) {
				return nil
			}
		}
		if !page.More || len(page.Results) == 0 {
			return nil
		}
		opts.Offset += len(page.Results)
	}
}

// Release is one published version of an agent.
type Release struct {
	Version     string    `json:"version"`
	Commit      string    `json:"commit"`
	Yanked      bool      `json:"yanked"`
	PublishedAt time.Time `json:"published_at"`
}

// Agent is an agent's published versions.
type Agent struct {
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Latest      *string   `json:"latest"`
	Versions    []Release `json:"versions"`
}

// Info returns an agent's published versions (`mcpz info`).
func (c *Client) Info(ctx context.Context, name string) (*Agent, error) {
	ns, agent, err := splitName(name)
	if err != nil {
		return nil, err
	}
	var out Agent
	return &out, c.do(ctx, "GET", "/v1/agents/"+ns+"/"+agent, nil, nil, &out)
}

// Deployment is a deployment's desired state and how far it got. State is "progressing",
// "ready", "failed" or "deleting". Raw holds the whole answer.
type Deployment struct {
	Name     string            `json:"name"`
	Agent    string            `json:"agent"`
	Version  string            `json:"version"`
	Commit   string            `json:"commit"`
	Revision int               `json:"revision"`
	Replicas int               `json:"replicas"`
	Selector map[string]string `json:"selector"`
	State    string            `json:"state"`
	Ready    int               `json:"ready"`
	ByStatus map[string]int    `json:"by_status"`
	Reason   string            `json:"reason"`
	Raw      json.RawMessage   `json:"-"`
}

// Deployment returns a deployment's status (`mcpz deploy status`).
func (c *Client) Deployment(ctx context.Context, name string) (*Deployment, error) {
	ns, agent, err := splitName(name)
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/v1/deployments/"+ns+"/"+agent, nil, nil, &raw); err != nil {
		return nil, err
	}
	var out Deployment
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, err
	}
	out.Raw = raw
	return &out, nil
}

// UsageRow sums the calls of one agent, version and tool.
type UsageRow struct {
	Agent  string `json:"agent"`
	Tool   string `json:"tool"`
	Calls  int    `json:"calls"`
	Errors int    `json:"errors"`
}

// Usage is what the gateway counted: the account's calls, or every caller of one agent.
type Usage struct {
	Scope   string            `json:"scope"`
	Agent   *string           `json:"agent"`
	Summary []UsageRow        `json:"summary"`
	Events  []json.RawMessage `json:"events"`
}

// Calls adds up the summary's calls.
func (u *Usage) Calls() int {
	total := 0
	for _, row := range u.Summary {
		total += row.Calls
	}
	return total
}

// UsageOptions: Agent (all its callers, for its owner), Since/Until ("1h", "7d" or RFC 3339),
// Events (how many raw events to include).
type UsageOptions struct {
	Agent, Since, Until string
	Events              int
}

// Usage reads usage (`mcpz usage`).
func (c *Client) Usage(ctx context.Context, opts UsageOptions) (*Usage, error) {
	query := url.Values{}
	for key, value := range map[string]string{"agent": opts.Agent, "since": opts.Since, "until": opts.Until} {
		if value != "" {
			query.Set(key, value)
		}
	}
	if opts.Events > 0 {
		query.Set("events", strconv.Itoa(opts.Events))
	}
	var out Usage
	return &out, c.do(ctx, "GET", "/v1/usage", query, nil, &out)
}

// Balance is an account's money in the currency's minor unit (integers, never floats).
type Balance struct {
	Account   string `json:"account"`
	Currency  string `json:"currency"`
	Decimals  int    `json:"decimals"`
	Available int64  `json:"available"`
	Reserved  int64  `json:"reserved"`
}

// Balance reads the account's balance (`mcpz billing balance`).
func (c *Client) Balance(ctx context.Context) (*Balance, error) {
	var out Balance
	return &out, c.do(ctx, "GET", "/v1/billing/balance", nil, nil, &out)
}
