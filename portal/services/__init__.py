"""Transactional operations over the models. They flush; the request or the job commits once."""
