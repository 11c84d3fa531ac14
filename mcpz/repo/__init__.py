"""Agent repositories on dulwich: repository, store, model, history, worktree, diff, release, templates."""
