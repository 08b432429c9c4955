"""Pure merges of several subsystems' answers into one, by topic."""
