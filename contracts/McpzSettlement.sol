// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";

/// @title mcpz settlement: consumers' deposits in, creators' payouts out in Merkle-committed batches.
/// @notice The registry keeps the ledger; this contract holds the tokens. A payout batch is one root
/// over leaves (index, account, amount) in OpenZeppelin's StandardMerkleTree form, so any creator can
/// check their leaf against the committed root without trusting the registry.
/// The contract never commits more than it holds unallocated, and pays each leaf at most once.
/// Gas: the guard is the transient-storage one (cancun), and Pausable comes last among the bases so
/// that its `_paused` flag and our `outstanding` share one slot, read together by every claim.
contract McpzSettlement is AccessControl, EIP712, ReentrancyGuardTransient, Pausable {
    using SafeERC20 for IERC20;
    using BitMaps for BitMaps.BitMap;

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant WITHDRAWAL_TYPEHASH =
        keccak256("Withdrawal(address account,uint256 amount,uint256 nonce,uint256 expiry)");
    /// Registry account names are at most 64 characters (mcpz/names.py); the bound keeps a deposit's
    /// log small and stops anyone from paying to bloat the watcher's input.
    uint256 public constant MAX_ACCOUNT_LENGTH = 64;

    struct Batch {
        bytes32 root;
        // Both in one slot: a claim updates `claimed` and reads `total` with one storage access.
        uint128 total;
        uint128 claimed;
    }

    struct Claim {
        uint256 batchId;
        uint256 index;
        address account;
        uint256 amount;
        bytes32[] proof;
    }

    /// Sum over all batches of (total - claimed): tokens promised to creators and not yet paid.
    /// (Declared first: it packs with Pausable's flag. Each total fits uint128; the sum is checked.)
    uint128 public outstanding;

    IERC20 public immutable token;

    mapping(uint256 batchId => Batch) private _batches;
    mapping(uint256 batchId => BitMaps.BitMap) private _claimed;
    mapping(address account => BitMaps.BitMap) private _usedNonces;
    mapping(address account => bool) public pushOptIn;

    event Deposited(address indexed from, string account, uint256 amount);
    event BatchCommitted(uint256 indexed batchId, bytes32 root, uint256 total);
    event Claimed(uint256 indexed batchId, uint256 index, address indexed account, uint256 amount);
    event PushOptInSet(address indexed account, bool optIn);
    event Withdrawn(address indexed account, uint256 amount, uint256 nonce);

    error ZeroAddress();
    error ZeroAmount();
    error BadAccountName(uint256 length);
    error ZeroRoot();
    error BatchExists(uint256 batchId);
    error UnknownBatch(uint256 batchId);
    error InsufficientUnallocated(uint256 requested, uint256 unallocated);
    error AlreadyClaimed(uint256 batchId, uint256 index);
    error InvalidProof(uint256 batchId, uint256 index);
    error BatchOverdrawn(uint256 batchId);
    error BatchMismatch(uint256 expected, uint256 got);
    error NotOptedIn(address account);
    error VoucherExpired(uint256 expiry);
    error NonceUsed(address account, uint256 nonce);
    error NotOperatorSignature(address signer);

    constructor(IERC20 token_, address admin, address operator) EIP712("McpzSettlement", "1") {
        if (address(token_) == address(0) || admin == address(0) || operator == address(0)) {
            revert ZeroAddress();
        }
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(OPERATOR_ROLE, operator);
    }

    // ---- deposits ----

    /// Pulls `amount` from the caller (after an ERC-20 approval) and credits registry account `account`.
    function deposit(string calldata account, uint256 amount) external whenNotPaused nonReentrant {
        _deposit(account, amount);
    }

    /// Same as `deposit`, with an EIP-2612 permit in place of a prior approval.
    function depositWithPermit(
        string calldata account,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused nonReentrant {
        // A permit seen in the mempool can be submitted first by anyone; the allowance it set is then
        // already there, so a failed permit is not an error by itself (the transfer below decides).
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(account, amount);
    }

    function _deposit(string calldata account, uint256 amount) private {
        uint256 length = bytes(account).length;
        if (length == 0 || length > MAX_ACCOUNT_LENGTH) revert BadAccountName(length);
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(msg.sender, account, amount);
    }

    // ---- payout batches ----

    /// Commits a payout batch. `total` must cover the sum of the leaves' amounts; claims past it revert.
    function commitBatch(uint256 batchId, bytes32 root, uint256 total) external onlyRole(OPERATOR_ROLE) {
        if (root == bytes32(0)) revert ZeroRoot();
        if (total == 0) revert ZeroAmount();
        if (_batches[batchId].root != bytes32(0)) revert BatchExists(batchId);
        uint256 free = unallocated();
        if (total > free) revert InsufficientUnallocated(total, free);
        uint128 total128 = SafeCast.toUint128(total);
        _batches[batchId] = Batch({root: root, total: total128, claimed: 0});
        outstanding += total128;
        emit BatchCommitted(batchId, root, total);
    }

    /// Pays one leaf to its account. Anyone may submit it; the tokens always go to `account`.
    function claim(
        uint256 batchId,
        uint256 index,
        address account,
        uint256 amount,
        bytes32[] calldata proof
    ) external whenNotPaused nonReentrant {
        _settle(batchId, index, account, amount, proof);
        token.safeTransfer(account, amount);
    }

    /// Pays several leaves (typically one creator's leaves in several batches) in one transaction.
    /// Consecutive claims for the same account are paid with one transfer.
    function claimMany(Claim[] calldata claims) external whenNotPaused nonReentrant {
        uint256 n = claims.length;
        address payee;
        uint256 owed;
        for (uint256 i = 0; i < n; ++i) {
            Claim calldata c = claims[i];
            _settle(c.batchId, c.index, c.account, c.amount, c.proof);
            if (c.account != payee) {
                if (owed != 0) token.safeTransfer(payee, owed);
                payee = c.account;
                owed = 0;
            }
            owed += c.amount;
        }
        if (owed != 0) token.safeTransfer(payee, owed);
    }

    /// The operator pays leaves of one batch to creators who opted in. A leaf already claimed (by its
    /// creator racing the push) is skipped rather than failing the whole push.
    function pushPayouts(
        uint256 batchId,
        Claim[] calldata claims
    ) external onlyRole(OPERATOR_ROLE) whenNotPaused nonReentrant {
        uint256 n = claims.length;
        for (uint256 i = 0; i < n; ++i) {
            Claim calldata c = claims[i];
            if (c.batchId != batchId) revert BatchMismatch(batchId, c.batchId);
            if (!pushOptIn[c.account]) revert NotOptedIn(c.account);
            if (_claimed[batchId].get(c.index)) continue;
            _settle(batchId, c.index, c.account, c.amount, c.proof);
            token.safeTransfer(c.account, c.amount);
        }
    }

    /// A creator's consent to be paid by `pushPayouts` (they can always claim themselves).
    function setPushOptIn(bool optIn) external {
        pushOptIn[msg.sender] = optIn;
        emit PushOptInSet(msg.sender, optIn);
    }

    /// Checks a leaf and marks it paid; the caller transfers.
    function _settle(
        uint256 batchId,
        uint256 index,
        address account,
        uint256 amount,
        bytes32[] calldata proof
    ) private {
        Batch storage batch = _batches[batchId];
        bytes32 root = batch.root;
        if (root == bytes32(0)) revert UnknownBatch(batchId);
        if (_claimed[batchId].get(index)) revert AlreadyClaimed(batchId, index);
        if (!MerkleProof.verifyCalldata(proof, root, leafHash(index, account, amount))) {
            revert InvalidProof(batchId, index);
        }
        uint256 claimed = uint256(batch.claimed) + amount;
        // A root whose leaves sum past its total would otherwise pay out of other batches' money.
        if (claimed > batch.total) revert BatchOverdrawn(batchId);
        _claimed[batchId].set(index);
        // claimed <= total, which fit in uint128 when committed; so does amount.
        batch.claimed = uint128(claimed);
        outstanding -= uint128(amount);
        emit Claimed(batchId, index, account, amount);
    }

    // ---- withdrawals ----

    /// A consumer takes back unspent balance with a voucher the operator signed (EIP-712 Withdrawal).
    function withdraw(
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external whenNotPaused nonReentrant {
        if (block.timestamp > expiry) revert VoucherExpired(expiry);
        if (amount == 0) revert ZeroAmount();
        if (_usedNonces[msg.sender].get(nonce)) revert NonceUsed(msg.sender, nonce);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(WITHDRAWAL_TYPEHASH, msg.sender, amount, nonce, expiry)));
        address signer = ECDSA.recover(digest, signature);
        if (!hasRole(OPERATOR_ROLE, signer)) revert NotOperatorSignature(signer);
        uint256 free = unallocated();
        if (amount > free) revert InsufficientUnallocated(amount, free);
        _usedNonces[msg.sender].set(nonce);
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount, nonce);
    }

    // ---- operator ----

    function pause() external onlyRole(OPERATOR_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(OPERATOR_ROLE) {
        _unpause();
    }

    // ---- views ----

    /// Tokens held that no committed batch has a claim on: what new batches and withdrawals may use.
    function unallocated() public view returns (uint256) {
        uint256 held = token.balanceOf(address(this));
        // Tokens cannot leave except through claims and withdrawals, so held >= outstanding; the guard
        // keeps a view from reverting should a token ever misbehave (e.g. a rebasing one shrinking).
        return held > outstanding ? held - outstanding : 0;
    }

    function batches(uint256 batchId) external view returns (bytes32 root, uint256 total, uint256 claimed) {
        Batch storage batch = _batches[batchId];
        return (batch.root, batch.total, batch.claimed);
    }

    function isClaimed(uint256 batchId, uint256 index) external view returns (bool) {
        return _claimed[batchId].get(index);
    }

    function nonceUsed(address account, uint256 nonce) external view returns (bool) {
        return _usedNonces[account].get(nonce);
    }

    /// Whether a leaf is in a committed batch: what `mcpz billing verify-payout` asks the chain.
    function verifyLeaf(
        uint256 batchId,
        uint256 index,
        address account,
        uint256 amount,
        bytes32[] calldata proof
    ) external view returns (bool) {
        bytes32 root = _batches[batchId].root;
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leafHash(index, account, amount));
    }

    /// OpenZeppelin StandardMerkleTree's leaf for types (uint256, address, uint256): hashed twice so a
    /// 64-byte leaf preimage can never be taken for an inner node.
    function leafHash(uint256 index, address account, uint256 amount) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }
}
