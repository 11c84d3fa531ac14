"""TestToken's EIP-3009 transfers with authorization on anvil, signed by mcpz.keys.eip3009.

x402 pays with these, so the token must refuse what USDC refuses: a used or canceled nonce, a
window not yet open or closed, a signature of someone else, a receive submitted by anyone but the payee.
"""

from __future__ import annotations

from typing import Any

import pytest
from chainutil import CHAIN_ID, Settlement, error_selector, transact

from mcpz.contracts import TEST_TOKEN, load_artifact
from mcpz.keys import eip3009
from mcpz.keys.ethkeys import LocalAccount

pytestmark = pytest.mark.slow

TOKEN_ABI = load_artifact(TEST_TOKEN).abi


def domain(s: Settlement) -> eip3009.Domain:
    return eip3009.Domain("mcpz Test USD", "1", CHAIN_ID, s.token.address)


def now(s: Settlement) -> int:
    timestamp: int = s.anvil.w3.eth.get_block("latest")["timestamp"]
    return timestamp


def authorize(
    s: Settlement, payer: LocalAccount, to: str, value: int, **window: int
) -> tuple[eip3009.Authorization, str]:
    auth = eip3009.Authorization(
        sender=payer.address,
        to=to,
        value=value,
        valid_after=window.get("after", 0),
        valid_before=window.get("before", now(s) + 600),
        nonce=eip3009.new_nonce(),
    )
    return auth, eip3009.sign(payer, domain(s), auth)


def transfer_call(
    s: Settlement, auth: eip3009.Authorization, signature: str, name: str = "transferWithAuthorization"
) -> Any:
    v, r, sig_s = eip3009.split(signature)
    nonce = bytes.fromhex(auth.nonce[2:])
    return getattr(s.token.functions, name)(
        auth.sender, auth.to, auth.value, auth.valid_after, auth.valid_before, nonce, v, r, sig_s
    )


def refused(s: Settlement, error: str, call: Any, sender: LocalAccount) -> None:
    from web3.exceptions import ContractCustomError

    with pytest.raises(ContractCustomError) as caught:
        transact(s.anvil, call, sender)
    data = caught.value.data if isinstance(caught.value.data, str) else str(caught.value.data)
    assert data.startswith(error_selector(TOKEN_ABI, error)), f"expected {error}, got {data}"


def test_an_authorized_transfer_moves_exactly_the_value_once(settlement: Settlement) -> None:
    s = settlement
    payer, payee = s.new_account(), s.new_account()
    s.mint(payer.address, 5_000_000)
    auth, signature = authorize(s, payer, payee.address, 1_250_000)
    assert eip3009.recover(domain(s), auth, signature) == payer.address
    receipt = s.send(transfer_call(s, auth, signature), s.operator)  # anyone may submit it
    assert s.balance(payer.address) == 3_750_000
    assert s.balance(payee.address) == 1_250_000
    assert s.token.functions.authorizationState(payer.address, bytes.fromhex(auth.nonce[2:])).call()
    from web3.logs import DISCARD

    [used] = s.token.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)
    assert used["args"]["authorizer"] == payer.address
    refused(s, "AuthorizationUsedOrCanceled", transfer_call(s, auth, signature), s.operator)
    assert s.balance(payee.address) == 1_250_000


def test_the_window_bounds_are_exclusive(settlement: Settlement) -> None:
    s = settlement
    payer = s.new_account()
    s.mint(payer.address, 10)
    t = now(s)
    early, sig = authorize(s, payer, s.user.address, 1, after=t + 100, before=t + 200)
    refused(s, "AuthorizationNotYetValid", transfer_call(s, early, sig), s.operator)
    late, sig2 = authorize(s, payer, s.user.address, 1, before=t + 5)
    s.anvil.set_next_timestamp(t + 5)
    s.anvil.w3.provider.make_request("anvil_mine", ["0x1"])
    refused(s, "AuthorizationExpired", transfer_call(s, late, sig2), s.operator)


def test_a_signature_of_another_key_or_other_terms_is_refused(settlement: Settlement) -> None:
    s = settlement
    payer, thief = s.new_account(), s.new_account()
    s.mint(payer.address, 10)
    auth, _ = authorize(s, payer, thief.address, 10)
    forged = eip3009.sign(thief, domain(s), auth)  # the thief signs for the payer's tokens
    refused(s, "InvalidAuthorizationSignature", transfer_call(s, auth, forged), s.operator)
    honest, signature = authorize(s, payer, s.user.address, 1)
    more = eip3009.Authorization(
        honest.sender, honest.to, 10, honest.valid_after, honest.valid_before, honest.nonce
    )
    refused(s, "InvalidAuthorizationSignature", transfer_call(s, more, signature), s.operator)
    assert eip3009.recover(domain(s), more, signature) != payer.address
    assert s.balance(payer.address) == 10


def test_receive_is_for_the_payee_only_and_cancel_burns_the_nonce(settlement: Settlement) -> None:
    s = settlement
    payer, payee = s.new_account(), s.new_account()
    s.mint(payer.address, 10)
    auth = eip3009.Authorization(payer.address, payee.address, 4, 0, now(s) + 600, eip3009.new_nonce())
    encoded = eip3009.encode_typed_data(
        domain(s).as_dict(),
        {"ReceiveWithAuthorization": eip3009.TYPES[eip3009.PRIMARY_TYPE]},
        auth.message(),
    )
    signature = "0x" + bytes(payer.sign_message(encoded).signature).hex()
    refused(s, "CallerMustBePayee", transfer_call(s, auth, signature, "receiveWithAuthorization"), s.operator)
    s.send(transfer_call(s, auth, signature, "receiveWithAuthorization"), payee)
    assert s.balance(payee.address) == 4

    nonce = eip3009.new_nonce()
    cancel = eip3009.encode_typed_data(
        domain(s).as_dict(),
        {
            "CancelAuthorization": [
                {"name": "authorizer", "type": "address"},
                {"name": "nonce", "type": "bytes32"},
            ]
        },
        {"authorizer": payer.address, "nonce": bytes.fromhex(nonce[2:])},
    )
    signed = payer.sign_message(cancel)
    s.send(
        s.token.functions.cancelAuthorization(
            payer.address,
            bytes.fromhex(nonce[2:]),
            signed.v,
            signed.r.to_bytes(32, "big"),
            signed.s.to_bytes(32, "big"),
        ),
        s.operator,
    )
    later = eip3009.Authorization(payer.address, payee.address, 1, 0, now(s) + 600, nonce)
    refused(
        s,
        "AuthorizationUsedOrCanceled",
        transfer_call(s, later, eip3009.sign(payer, domain(s), later)),
        s.operator,
    )


def test_a_token_without_eip5267_is_paid_under_its_name_and_version(settlement: Settlement) -> None:
    """USDC's FiatToken v2 has no eip712Domain(): the registry reads its domain from name() and
    version(), and an authorization signed under it verifies and settles."""
    from chainutil import deploy

    from registry_server.settlement import x402
    from registry_server.settlement.chain import SettlementChain

    s = settlement
    fiat = deploy(s.anvil, s.admin, "TestFiatToken")
    contract = deploy(s.anvil, s.admin, "McpzSettlement", fiat.address, s.admin.address, s.operator.address)
    assert fiat.functions.version().call() == "2"
    with pytest.raises(Exception):  # noqa: B017  (eip712Domain(), 0x84b0196e, is not there: it reverts)
        s.anvil.w3.eth.call({"to": fiat.address, "data": "0x84b0196e"})
    chain = SettlementChain(s.anvil.rpc_url, contract.address, CHAIN_ID)
    assert chain.token_domain() == ("Test Fiat USD", "2", fiat.address)
    relayer = s.new_account()
    facilitator = x402.Facilitator(chain, relayer)
    offer = facilitator.offer(1234)
    payer = s.new_account()
    transact(s.anvil, fiat.functions.mint(payer.address, 5000), s.admin)
    auth = eip3009.Authorization(
        sender=payer.address, to=contract.address, value=1234, valid_after=0,
        valid_before=now(s) + 600, nonce=eip3009.new_nonce(),
    )  # fmt: skip
    payload = {
        "x402Version": 2,
        "accepted": offer.requirement(),
        "payload": {"authorization": auth.to_json(), "signature": eip3009.sign(payer, offer.domain, auth)},
    }
    payment = x402.parse(payload)
    facilitator.verify(offer, payment)  # the signature recovers, the simulated transfer succeeds
    signed = facilitator.sign(offer, payment, s.anvil.w3.eth.get_transaction_count(relayer.address))
    chain.broadcast(signed.raw)
    assert facilitator.outcome(signed.tx_hash) is True
    assert fiat.functions.balanceOf(contract.address).call() == 1234
    assert fiat.functions.balanceOf(payer.address).call() == 5000 - 1234
