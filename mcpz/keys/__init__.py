"""Keys and signatures: the wallet, signed statements, Sign-In with Ethereum, what a node trusts."""
