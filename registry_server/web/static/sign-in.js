// Wallet sign-in: find the browser's wallets (EIP-6963, else an injected window.ethereum), ask the
// chosen one for its account (EIP-1193), have it sign the registry's EIP-4361 message
// (personal_sign), and post the signature back; the registry answers with a session cookie.
(function () {
  "use strict";
  var root = document.getElementById("sign-in");
  if (!root) return;
  var list = document.getElementById("wallets");
  var label = document.getElementById("wallets-label");
  var status = document.getElementById("sign-in-status");
  var seen = {};
  var busy = false;

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function hexOf(text) {
    var bytes = new TextEncoder().encode(text);
    var out = "0x";
    for (var i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0");
    return out;
  }

  async function post(url, body) {
    var answer = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body),
    });
    var data = await answer.json().catch(function () { return {}; });
    if (!answer.ok) {
      var error = (data && data.error) || {};
      throw new Error((error.message || "the registry refused: HTTP " + answer.status) +
        (error.hint ? " (" + error.hint + ")" : ""));
    }
    return data;
  }

  async function signIn(provider, name) {
    if (busy) return;
    busy = true;
    try {
      say("Asking " + name + " for your account…");
      var accounts = await provider.request({ method: "eth_requestAccounts" });
      if (!accounts || !accounts.length) throw new Error("the wallet shared no account");
      var address = accounts[0];
      var issued = await post(root.dataset.messageUrl, { address: address });
      say("Sign the message in " + name + "…");
      var signature = await provider.request({ method: "personal_sign", params: [hexOf(issued.message), address] });
      say("Checking the signature…");
      var done = await post(root.dataset.signInUrl, {
        message: issued.message, signature: signature, next: root.dataset.next || "/dashboard",
      });
      say("Signed in as " + done.account + ".");
      window.location.assign(done.next);
    } catch (e) {
      say("Sign-in failed: " + (e && e.message ? e.message : String(e)), true);
    } finally {
      busy = false;
    }
  }

  function add(info, provider) {
    var key = info.uuid || info.rdns || info.name;
    if (seen[key]) return;
    seen[key] = true;
    var item = document.createElement("li");
    var button = document.createElement("button");
    button.type = "button";
    if (info.icon && /^data:image\//.test(info.icon)) {
      var icon = document.createElement("img");
      icon.src = info.icon;
      icon.alt = "";
      icon.width = 24;
      icon.height = 24;
      button.appendChild(icon);
    }
    button.appendChild(document.createTextNode(info.name || "Browser wallet"));
    button.addEventListener("click", function () { signIn(provider, info.name || "your wallet"); });
    item.appendChild(button);
    list.appendChild(item);
    label.hidden = false;
  }

  window.addEventListener("eip6963:announceProvider", function (event) {
    var detail = event.detail;
    if (detail && detail.info && detail.provider) add(detail.info, detail.provider);
  });
  window.dispatchEvent(new Event("eip6963:requestProvider"));
  // A wallet that predates EIP-6963 only sets window.ethereum.
  window.setTimeout(function () {
    if (Object.keys(seen).length === 0 && window.ethereum) {
      add({ uuid: "injected", name: "Browser wallet" }, window.ethereum);
    }
    if (Object.keys(seen).length === 0) {
      say("No wallet found in this browser. Install one, or sign in from a terminal with mcpz login --wallet.", true);
    }
  }, 500);
})();
