"""The payment provider boundary: Stripe through stripe-python, and its errors classified."""
