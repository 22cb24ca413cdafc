"""Transactional operations over the models, one subpackage per domain, each holding its writes, its
page reads (`views`) and its prebuilt statements together. They flush; the request
(blueprints.transactions) or the job commits once. The one exception is the purchase path's
two-phase step: a pending card payment is committed before Stripe is called (purchases.flow).

Lower layers never import higher ones: payments knows nothing of what is bought; purchases knows
invoices, payments and the wallet, and applies typed effects that plan changes (subscriptions),
packages (usage) and top-ups (wallet) register.
"""
