// Our own scripts. htmx requests carry the CSRF token via hx-headers on <body>.
document.addEventListener("htmx:responseError", (event) => {
  const status = event.detail.xhr.status;
  if (status === 400 || status === 403) {
    window.alert("That action was refused (" + status + "). Reload the page and try again.");
  }
});
