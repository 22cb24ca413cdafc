// Stripe.js glue: save a card through a SetupIntent, and confirm a top-up the bank wants to authenticate.
// Card details go from Stripe's element straight to Stripe; our server only ever sees the pm_ id.
(function () {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function messageOf(error) {
    if (!error) return "Something went wrong. Please try again.";
    if (typeof error === "string") return error;
    return error.message || "Something went wrong. Please try again.";
  }

  function setupCardForm(box) {
    if (typeof Stripe === "undefined") {
      return;  // Stripe.js did not load: the noscript-style note stays accurate, nothing to mount
    }
    const stripe = Stripe(box.dataset.stripeKey);
    const card = stripe.elements().create("card");
    const errors = document.getElementById("card-errors");
    const button = document.getElementById("card-submit");
    const form = document.getElementById("save-card-form");
    box.hidden = false;
    card.mount("#card-element");

    button.addEventListener("click", async () => {
      errors.textContent = "";
      button.setAttribute("aria-busy", "true");
      button.disabled = true;
      try {
        // A fresh SetupIntent per attempt: a declined one cannot be reused.
        const response = await fetch(box.dataset.setupUrl, {
          method: "POST",
          headers: {"X-CSRFToken": csrfToken(), "Accept": "application/json"},
          credentials: "same-origin",
        });
        const body = await response.json().catch(() => ({}));
        if (!response.ok || !body.client_secret) {
          throw (body.error || {message: "We could not start saving the card. Please try again."});
        }
        const result = await stripe.confirmCardSetup(body.client_secret, {payment_method: {card: card}});
        if (result.error) {
          throw result.error;
        }
        const input = form.querySelector('input[name="payment_method_id"]');
        input.value = result.setupIntent.payment_method;
        form.querySelector('input[name="setup_intent_id"]').value = result.setupIntent.id;
        form.submit();
      } catch (error) {
        errors.textContent = messageOf(error);
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
  }

  function confirmPaymentForm(form) {
    if (typeof Stripe === "undefined") return;
    const stripe = Stripe(form.dataset.stripeKey);
    const errors = document.getElementById("confirm-errors");
    const button = document.getElementById("confirm-button");
    form.addEventListener("submit", async (event) => {
      if (form.dataset.confirmed === "yes") return;  // the bank step is done: let the form go
      event.preventDefault();
      errors.textContent = "";
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      const result = await stripe.confirmCardPayment(form.dataset.clientSecret);
      if (result.error) {
        errors.textContent = messageOf(result.error);
      }
      // Either way the server asks Stripe how it ended and records it.
      form.dataset.confirmed = "yes";
      form.submit();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-stripe-setup]").forEach(setupCardForm);
    document.querySelectorAll("[data-stripe-confirm-payment]").forEach(confirmPaymentForm);
  });
})();
