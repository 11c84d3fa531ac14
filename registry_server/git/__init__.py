"""Git: smart HTTP for agent repositories, receiving and checking pushes, recovery after a crash."""
