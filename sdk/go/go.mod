module github.com/mcpz/mcpz/sdk/go

go 1.19
