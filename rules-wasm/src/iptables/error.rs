//! Why a rule text was rejected, and what was accepted with a warning.
use thiserror::Error;

/// A rejected rule line: where (line, 1-based token position), which token, and why.
/// A token position past the last token, with the token `<end of line>`, means something
/// required was missing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("line {line}, token {pos} `{token}`: {kind}")]
pub struct ParseError {
    /// 1-based line number in the text given to the parser.
    pub line: usize,
    /// 1-based index of the offending token in the line (whitespace-separated, quotes kept
    /// together).
    pub pos: usize,
    /// The offending token's text.
    pub token: String,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// What is wrong with a rule line. Each message says what to write instead where there is
/// something to write.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// An option this grammar does not know, or one whose match module was not loaded
    /// (`--dports` without `-m multiport`, as iptables requires).
    #[error("unknown option (or its match module is not loaded with -m)")]
    UnknownOption,
    /// The option needs a value and the line ended (or another option followed).
    #[error("missing value for this option")]
    MissingValue,
    /// Not an address, a CIDR, or a known container name.
    #[error("bad address or CIDR")]
    BadAddress,
    /// Not a port (0–65535) or a range `N:M` with N ≤ M.
    #[error("bad port or port range")]
    BadPort,
    /// A port match without `-p tcp`, `-p udp` (or sctp/dccp/udplite for multiport).
    #[error("port match needs -p tcp or -p udp")]
    PortWithoutTcpUdp,
    /// A name that the resolver does not know.
    #[error(
        "unknown name: not a container, a network, a bridge such as `docker0`, or an interface of the host"
    )]
    UnknownName,
    /// `network:NAME` naming no bridge network bridgewall follows (or, for `-s`/`-d`, one
    /// whose subnets are not known).
    #[error(
        "unknown network: `network:NAME` needs the name of a bridge network bridgewall serves \
         (as `docker network ls` shows it), with known subnets for -s/-d"
    )]
    UnknownNetwork,
    /// A Docker network's name where an address is expected: its subnets are written
    /// `network:NAME`, so that a container of the same name keeps its meaning.
    #[error("this is a network, not a container: write `network:NAME` for its subnets")]
    NetworkAsAddress,
    /// `! -i NAME` / `! -o NAME` where NAME stands for several ports.
    #[error(
        "cannot negate a name that stands for several ports (a network, a container on \
         several networks, a wildcard over several bridges): one negated rule cannot express it; \
         match the ports you want with RETURN rules first"
    )]
    NegatedManyPorts,
    /// No `-j` on the line.
    #[error("missing -j (ACCEPT, DROP, REJECT, RETURN, LOG or a user chain)")]
    MissingTarget,
    /// The same option given twice.
    #[error("option given twice")]
    Duplicate,
    /// Not a protocol name or number.
    #[error("unknown protocol")]
    BadProtocol,
    /// A `-j` target that is neither built in nor a chain of the rules.
    #[error("unknown target: not ACCEPT, DROP, REJECT, RETURN, LOG or a chain made with -N")]
    BadTarget,
    /// A chain that does not exist (or cannot hold user rules).
    #[error("unknown chain: create it with -N first (DOCKER-USER, FORWARD and DOCKER exist)")]
    UnknownChain,
    /// An insert position that is 0, not a number, or past the end of the chain + 1.
    #[error("bad rule position (1 to {max})")]
    BadPosition {
        /// Largest valid position at that point.
        max: usize,
    },
    /// A position after `-A`, which always appends.
    #[error("a rule position is only allowed with -I")]
    PositionWithAppend,
    /// `!` before something that cannot be negated, or twice.
    #[error("cannot be negated here")]
    BadNegation,
    /// `!` with a list of addresses: iptables refuses it too.
    #[error("cannot negate several addresses (iptables refuses it too); use -m iprange or -m set")]
    NegatedMany,
    /// Source and destination can never be the same family.
    #[error("source and destination are of different IP families")]
    FamilyMismatch,
    /// A table, match module or option bridgewall does not implement.
    #[error("not supported by bridgewall: {0}")]
    Unsupported(&'static str),
    /// Not a connection-tracking state.
    #[error("unknown state (NEW, ESTABLISHED, RELATED or INVALID)")]
    BadState,
    /// Not an ICMP / ICMPv6 type name or `TYPE[/CODE]` number.
    #[error("unknown ICMP type (a name from `iptables -p icmp -h`, or TYPE[/CODE])")]
    BadIcmpType,
    /// Not a list of TCP flag names.
    #[error("bad TCP flags (SYN,ACK,FIN,RST,URG,PSH,ECE,CWR, ALL or NONE)")]
    BadTcpFlags,
    /// A `--reject-with` kind iptables does not know, or `tcp-reset` without `-p tcp`.
    #[error(
        "bad --reject-with (icmp-port-unreachable, icmp-host-prohibited, tcp-reset with -p tcp, …)"
    )]
    BadRejectWith,
    /// More than 15 ports in a multiport list, as iptables limits.
    #[error("too many ports in the list (15 at most, a range counting as two)")]
    TooManyPorts,
    /// Not a MAC address `XX:XX:XX:XX:XX:XX`.
    #[error("bad MAC address")]
    BadMac,
    /// A MAC address that belongs to no container.
    #[error(
        "no container has this MAC: bridgewall sees frames from outside after the host routed them, \
         so their source MAC is the bridge's; match -s ADDRESS instead"
    )]
    ForeignMac,
    /// `-m set` naming a set that no `ipset` line created.
    #[error("unknown ipset (no `create NAME …` line in the rules or the ipset file)")]
    UnknownSet,
    /// The direction flags do not fit the set's type (`hash:ip,port` needs two).
    #[error("direction flags do not fit the set type")]
    BadSetFlags,
    /// A malformed `ipset save` line (`create NAME TYPE …` / `add NAME ENTRY`).
    #[error("bad ipset line: {0}")]
    BadIpset(&'static str),
    /// A chain jump that would come back to a chain already being evaluated.
    #[error("chain loop: {0}")]
    ChainLoop(String),
    /// A combination through chains and RETURNs the rule model cannot state exactly.
    #[error("{0}")]
    Unrepresentable(#[from] crate::algebra::Unrepresentable),
    /// The rules expand past the compiler's limit (chains × RETURNs × lists).
    #[error("the rules expand to more than {0} flat rules")]
    TooLarge(usize),
    /// A value that is not a number in range.
    #[error("bad number")]
    BadNumber,
    /// An unterminated quote.
    #[error("unterminated quote")]
    BadQuote,
    /// `iptables-save` structure: a rule outside `*filter … COMMIT`, or a malformed line.
    #[error("not iptables-save output here: {0}")]
    BadSave(&'static str),
    /// `--ctdir` other than ORIGINAL or REPLY.
    #[error("bad --ctdir (ORIGINAL or REPLY)")]
    BadDirection,
}

/// Something accepted with a caveat (Docker's own chains skipped on import, a rule that can
/// never match): shown to the user, never silently dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    /// What was done and why.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}
