"""Development stand-ins, outside the installed package (the wheel holds only portal/ and worker/).

    python -m devtools.launcher run   what `make run` runs: the portal with all of the below
    devtools.embedded                 Redis, localstripe and the SMTP catcher as child processes
    devtools.postgres                 PostgreSQL through pgserver
    devtools.mailcatcher              the SMTP catcher and helpers to read what it caught
    devtools.stripe_emulator          localstripe plus Idempotency-Key replay and PaymentIntents by customer

devtools may import portal and worker; they never import devtools.
"""
