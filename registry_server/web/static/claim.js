// Claim buttons on the dashboard: the browser's wallet (EIP-6963, else an injected window.ethereum)
// sends the contract call the registry prepared for the payout (claim with its Merkle proof), on the
// settlement chain, and the page follows the transaction until it is mined. The registry never sees
// the wallet's key; the contract pays the payout's address whoever sends the call.
(function () {
  "use strict";
  var root = document.getElementById("payouts");
  if (!root) return;
  var status = document.getElementById("claim-status");
  var chainId = root.dataset.chainId;
  var contract = root.dataset.contract;
  var wallets = [];
  var busy = false;

  window.addEventListener("eip6963:announceProvider", function (event) {
    var detail = event.detail;
    if (detail && detail.provider) wallets.push(detail.provider);
  });
  window.dispatchEvent(new Event("eip6963:requestProvider"));

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function wallet() {
    if (wallets.length) return wallets[0];
    if (window.ethereum) return window.ethereum;
    throw new Error("no wallet in this browser: install one, or claim from a terminal with mcpz billing claim");
  }

  function sleep(ms) {
    return new Promise(function (resolve) { window.setTimeout(resolve, ms); });
  }

  async function onChain(provider) {
    var current = await provider.request({ method: "eth_chainId" });
    if (parseInt(current, 16) === parseInt(chainId, 16)) return;
    say("Asking the wallet to switch to chain " + parseInt(chainId, 16) + "…");
    await provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId: chainId }] });
  }

  async function mined(provider, hash) {
    for (var wait = 500; ; wait = Math.min(wait * 1.5, 5000)) {
      var receipt = await provider.request({ method: "eth_getTransactionReceipt", params: [hash] });
      if (receipt && receipt.blockNumber) return receipt;
      await sleep(wait);
    }
  }

  async function claim(button) {
    if (busy) return;
    busy = true;
    button.disabled = true;
    var batch = button.dataset.batch;
    try {
      var provider = wallet();
      say("Asking the wallet for your account…");
      var accounts = await provider.request({ method: "eth_requestAccounts" });
      if (!accounts || !accounts.length) throw new Error("the wallet shared no account");
      await onChain(provider);
      say("Confirm the claim of batch " + batch + " in the wallet…");
      var hash = await provider.request({
        method: "eth_sendTransaction",
        params: [{ from: accounts[0], to: contract, data: button.dataset.calldata }],
      });
      say("Sent " + hash + "; waiting for it to be mined…");
      var receipt = await mined(provider, hash);
      if (parseInt(receipt.status, 16) !== 1) throw new Error("the claim " + hash + " reverted");
      say("Claimed batch " + batch + " in transaction " + hash + ".");
      button.textContent = "Claimed";
    } catch (e) {
      button.disabled = false;
      var message = e && e.message ? e.message : String(e);
      if (/AlreadyClaimed|0x6bd4745f/.test(message)) message = "this payout is already claimed";
      say("Claim failed: " + message, true);
    } finally {
      busy = false;
    }
  }

  root.querySelectorAll("button.claim").forEach(function (button) {
    button.addEventListener("click", function () { claim(button); });
  });
})();
