"""The basics every stage shares: errors, file writing and the staged transaction, each option
and its declaration, figures of quality, the lazily imported libraries."""
