"""Provider costs: genai-prices, tenant prices and aliases, the price book."""
