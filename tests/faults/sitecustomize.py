"""Fault injection for worker processes a test starts (tests/worker/processes.py adds this folder to their
PYTHONPATH, so Python loads it when each process starts). Active only when PORTAL_FAULT names a fault.

A process cannot be killed from outside at an exact instant (after Stripe accepted a charge, before
our commit), so the fault kills it from inside at that point, once: the real charge is made, then
the process dies by SIGKILL, as `kill -9` would leave it. PORTAL_FAULT_MARKER is a file written just
before the kill, so the next process (or the next try) runs normally.
"""
import os
import signal

if os.environ.get("PORTAL_FAULT") == "kill_after_stripe_charge":
    import portal.services.payments as _payments

    _real_send = _payments.send
    _marker = os.environ["PORTAL_FAULT_MARKER"]

    def _send_then_die(request):
        answer = _real_send(request)
        if answer[0].status == "succeeded" and not os.path.exists(_marker):
            with open(_marker, "w") as marker:
                marker.write(f"{os.getpid()} {answer[1]}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return answer

    _payments.send = _send_then_die
