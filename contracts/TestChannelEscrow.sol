// SPDX-License-Identifier: Apache-2.0
// A TIP-1034 (v2) TIP-20 channel escrow for Teller's local-chain tests, written from
// the interface mppx 0.11 calls (the precompile's ABI) and TIP-1034's semantics:
// unidirectional channels keyed by the descriptor
// (payer, payee, operator, token, salt, authorizedSigner, expiringNonceHash),
// cumulative EIP-712 vouchers Voucher(bytes32 channelId,uint96 cumulativeAmount) in
// the domain {name: "TIP20 Channel Reserve", version: "1", chainId, verifyingContract}.
//
// TEST USE ONLY. Two things only Tempo's precompile can do are emulated from outside
// (testbed/escrow_proxy.py, see testbed/README.md):
//   - it moves the payer's TIP-20 with transferFrom, so the payer must have approved it;
//   - it cannot compute the open transaction's expiring-nonce hash, so a registrar
//     (set at deployment) primes it per (payer, salt) with primeOpen() before the open lands.
pragma solidity 0.8.26;

interface ITIP20Like {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

contract TestChannelEscrow {
    struct ChannelDescriptor {
        address payer;
        address payee;
        address operator;
        address token;
        bytes32 salt;
        address authorizedSigner;
        bytes32 expiringNonceHash;
    }

    struct ChannelState {
        uint96 settled;
        uint96 deposit;
        uint32 closeRequestedAt;
    }

    struct Channel {
        ChannelDescriptor descriptor;
        ChannelState state;
    }

    uint64 public constant CLOSE_GRACE_PERIOD = 15 minutes;
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint96 cumulativeAmount)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant SECP256K1_HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    address public immutable registrar;
    mapping(bytes32 => ChannelState) private states;
    // A closed channel keeps a tombstone so its id can never be opened again.
    mapping(bytes32 => bool) public finalized;
    // Keyed by payer and salt, so one payer's concurrent opens do not take each other's hash.
    mapping(address => mapping(bytes32 => bytes32)) public primedNonceHash;

    event ChannelOpened(bytes32 indexed channelId, address indexed payer, address indexed payee, address operator,
        address token, address authorizedSigner, bytes32 salt, bytes32 expiringNonceHash, uint96 deposit);
    event Settled(bytes32 indexed channelId, address indexed payer, address indexed payee, uint96 cumulativeAmount,
        uint96 deltaPaid, uint96 newSettled);
    event TopUp(bytes32 indexed channelId, address indexed payer, address indexed payee, uint96 additionalDeposit,
        uint96 newDeposit);
    event CloseRequested(bytes32 indexed channelId, address indexed payer, address indexed payee,
        uint256 closeGraceEnd);
    event ChannelClosed(bytes32 indexed channelId, address indexed payer, address indexed payee,
        uint96 settledToPayee, uint96 refundedToPayer);
    event CloseRequestCancelled(bytes32 indexed channelId, address indexed payer, address indexed payee);

    error NotRegistrar();
    error NoPrimedNonceHash();
    error ZeroDeposit();
    error ZeroPayee();
    error ChannelExists();
    error ChannelNotFound();
    error NotPayer();
    error NotPayeeOrOperator();
    error InvalidSignature();
    error AmountNotIncreasing();
    error AmountExceedsDeposit();
    error CaptureOutOfRange();
    error CloseNotRequested();
    error CloseAlreadyRequested();
    error GracePeriodNotOver();
    error DepositOverflow();
    error TransferFailed();

    constructor(address registrar_) {
        registrar = registrar_;
    }

    // --- test-only: the expiring-nonce hash the precompile reads from its transaction context ---

    function primeOpen(address payer, bytes32 salt, bytes32 expiringNonceHash) external {
        if (msg.sender != registrar) revert NotRegistrar();
        primedNonceHash[payer][salt] = expiringNonceHash;
    }

    // --- views ---

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("TIP20 Channel Reserve"), keccak256("1"),
            block.chainid, address(this)));
    }

    function getVoucherDigest(bytes32 channelId, uint96 cumulativeAmount) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    function computeChannelId(address payer, address payee, address operator, address token, bytes32 salt,
        address authorizedSigner, bytes32 expiringNonceHash) public view returns (bytes32) {
        return keccak256(abi.encode(payer, payee, operator, token, salt, authorizedSigner, expiringNonceHash,
            address(this), block.chainid));
    }

    function getChannel(ChannelDescriptor calldata d) external view returns (Channel memory) {
        return Channel(d, states[_id(d)]);
    }

    function getChannelState(bytes32 channelId) external view returns (ChannelState memory) {
        return states[channelId];
    }

    function getChannelStatesBatch(bytes32[] calldata channelIds) external view returns (ChannelState[] memory out) {
        out = new ChannelState[](channelIds.length);
        for (uint256 i = 0; i < channelIds.length; i++) out[i] = states[channelIds[i]];
    }

    // --- lifecycle ---

    function open(address payee, address operator, address token, uint96 deposit, bytes32 salt,
        address authorizedSigner) external returns (bytes32 channelId) {
        if (deposit == 0) revert ZeroDeposit();
        if (payee == address(0)) revert ZeroPayee();
        bytes32 nonceHash = primedNonceHash[msg.sender][salt];
        if (nonceHash == bytes32(0)) revert NoPrimedNonceHash();
        delete primedNonceHash[msg.sender][salt];
        channelId = computeChannelId(msg.sender, payee, operator, token, salt, authorizedSigner, nonceHash);
        if (states[channelId].deposit != 0 || finalized[channelId]) revert ChannelExists();
        states[channelId] = ChannelState(0, deposit, 0);
        _pull(token, msg.sender, deposit);
        emit ChannelOpened(channelId, msg.sender, payee, operator, token, authorizedSigner, salt, nonceHash, deposit);
    }

    function topUp(ChannelDescriptor calldata d, uint96 additionalDeposit) external {
        bytes32 channelId = _id(d);
        ChannelState storage s = _live(channelId);
        if (msg.sender != d.payer) revert NotPayer();
        if (additionalDeposit == 0) revert ZeroDeposit();
        uint256 next = uint256(s.deposit) + additionalDeposit;
        if (next > type(uint96).max) revert DepositOverflow();
        s.deposit = uint96(next);
        // A top-up answers the payee's concern: it withdraws a pending close request.
        if (s.closeRequestedAt != 0) {
            s.closeRequestedAt = 0;
            emit CloseRequestCancelled(channelId, d.payer, d.payee);
        }
        _pull(d.token, msg.sender, additionalDeposit);
        emit TopUp(channelId, d.payer, d.payee, additionalDeposit, uint96(next));
    }

    function settle(ChannelDescriptor calldata d, uint96 cumulativeAmount, bytes calldata signature) external {
        bytes32 channelId = _id(d);
        ChannelState storage s = _live(channelId);
        _onlyPayeeSide(d);
        if (cumulativeAmount <= s.settled) revert AmountNotIncreasing();
        if (cumulativeAmount > s.deposit) revert AmountExceedsDeposit();
        _checkVoucher(d, channelId, cumulativeAmount, signature);
        uint96 delta = cumulativeAmount - s.settled;
        s.settled = cumulativeAmount;
        _push(d.token, d.payee, delta);
        emit Settled(channelId, d.payer, d.payee, cumulativeAmount, delta, cumulativeAmount);
    }

    /// Cooperative close by the payee side: the payee receives captureAmount in total
    /// (at most the signed cumulativeAmount, at least what is already settled), the
    /// payer the rest of the deposit.
    function close(ChannelDescriptor calldata d, uint96 cumulativeAmount, uint96 captureAmount,
        bytes calldata signature) external {
        bytes32 channelId = _id(d);
        ChannelState memory s = _live(channelId);
        _onlyPayeeSide(d);
        if (captureAmount < s.settled || captureAmount > cumulativeAmount) revert CaptureOutOfRange();
        if (captureAmount > s.deposit) revert AmountExceedsDeposit();
        if (captureAmount > s.settled) _checkVoucher(d, channelId, cumulativeAmount, signature);
        uint96 toPayee = captureAmount - s.settled;
        uint96 refund = s.deposit - captureAmount;
        _finalize(channelId);
        if (toPayee > 0) _push(d.token, d.payee, toPayee);
        if (refund > 0) _push(d.token, d.payer, refund);
        emit ChannelClosed(channelId, d.payer, d.payee, toPayee, refund);
    }

    function requestClose(ChannelDescriptor calldata d) external {
        bytes32 channelId = _id(d);
        ChannelState storage s = _live(channelId);
        if (msg.sender != d.payer) revert NotPayer();
        if (s.closeRequestedAt != 0) revert CloseAlreadyRequested();
        s.closeRequestedAt = uint32(block.timestamp);
        emit CloseRequested(channelId, d.payer, d.payee, block.timestamp + CLOSE_GRACE_PERIOD);
    }

    function withdraw(ChannelDescriptor calldata d) external {
        bytes32 channelId = _id(d);
        ChannelState memory s = _live(channelId);
        if (msg.sender != d.payer) revert NotPayer();
        if (s.closeRequestedAt == 0) revert CloseNotRequested();
        if (block.timestamp < uint256(s.closeRequestedAt) + CLOSE_GRACE_PERIOD) revert GracePeriodNotOver();
        uint96 refund = s.deposit - s.settled;
        _finalize(channelId);
        if (refund > 0) _push(d.token, d.payer, refund);
        emit ChannelClosed(channelId, d.payer, d.payee, 0, refund);
    }

    // --- internals ---

    function _id(ChannelDescriptor calldata d) private view returns (bytes32) {
        return computeChannelId(d.payer, d.payee, d.operator, d.token, d.salt, d.authorizedSigner,
            d.expiringNonceHash);
    }

    function _live(bytes32 channelId) private view returns (ChannelState storage s) {
        s = states[channelId];
        if (s.deposit == 0) revert ChannelNotFound();
    }

    function _finalize(bytes32 channelId) private {
        delete states[channelId];
        finalized[channelId] = true;
    }

    function _onlyPayeeSide(ChannelDescriptor calldata d) private view {
        if (msg.sender != d.payee && (d.operator == address(0) || msg.sender != d.operator)) {
            revert NotPayeeOrOperator();
        }
    }

    function _checkVoucher(ChannelDescriptor calldata d, bytes32 channelId, uint96 cumulativeAmount,
        bytes calldata signature) private view {
        address expected = d.authorizedSigner == address(0) ? d.payer : d.authorizedSigner;
        if (signature.length != 65) revert InvalidSignature();
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if (uint256(s) > SECP256K1_HALF_N) revert InvalidSignature();
        address signer = ecrecover(getVoucherDigest(channelId, cumulativeAmount), v, r, s);
        if (signer == address(0) || signer != expected) revert InvalidSignature();
    }

    function _pull(address token, address from, uint96 amount) private {
        if (!ITIP20Like(token).transferFrom(from, address(this), amount)) revert TransferFailed();
    }

    function _push(address token, address to, uint96 amount) private {
        if (!ITIP20Like(token).transfer(to, amount)) revert TransferFailed();
    }
}
