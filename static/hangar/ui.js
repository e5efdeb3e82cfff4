// Small page behaviours with no framework: confirm before destructive forms,
// copy-to-clipboard buttons (also on plain-HTTP appliances, where the async
// clipboard API is missing), and closing the user menu on an outside click.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
}, true);

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (button) {
    const source = document.getElementById(button.dataset.copy);
    const text = source ? source.textContent.trim() : "";
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); copied = true; } catch (_) { copied = false; }
    }
    if (!copied && source) {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try { copied = document.execCommand("copy"); } catch (_) { copied = false; }
    }
    if (copied) {
      const label = button.textContent;
      button.textContent = button.dataset.copied || "✓";
      setTimeout(() => { button.textContent = label; }, 1500);
    }
    return;
  }
  const menu = document.getElementById("user-menu");
  if (menu && menu.open && !menu.contains(event.target)) menu.open = false;
});
