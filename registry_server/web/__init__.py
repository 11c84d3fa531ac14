"""The marketplace's web pages: server-rendered HTML, wallet sign-in with browser sessions."""
