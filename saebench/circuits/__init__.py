"""Circuit identification: rank attention heads, plant a known circuit, score rankings."""
